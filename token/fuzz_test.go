package token

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// The fuzz fixture is deterministic (fixed keys, fixed time), so that the
// tokens in the committed corpus stay valid, or stay refused for the
// reason they were made for.
var (
	fuzzNow    = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	fuzzEd     = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	fuzzSecret = []byte("shoal fuzz secret, 32 bytes or more")
)

const fuzzEdKID, fuzzHSKID = "fuzz-ed", "fuzz-hs"

func fuzzClaims() *Claims {
	return &Claims{
		Permissions: []string{"echo"},
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "shoal", Subject: "alice", Audience: jwt.ClaimStrings{"shoal"}, ID: "fuzz",
			IssuedAt:  jwt.NewNumericDate(fuzzNow.Add(-time.Minute)),
			NotBefore: jwt.NewNumericDate(fuzzNow.Add(-time.Minute)),
			ExpiresAt: jwt.NewNumericDate(fuzzNow.Add(time.Hour)),
		},
	}
}

// fuzzVerifier accepts every algorithm, HS256 too, so that algorithm
// confusion gets its chance: an Ed25519 key and an HS256 secret, no cache.
var fuzzVerifier = sync.OnceValue(func() *Verifier {
	ed, err := jwkset.NewJWKFromKey(fuzzEd, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: fuzzEdKID, ALG: EdDSA}})
	if err != nil {
		panic(err)
	}
	hs, err := jwkset.NewJWKFromKey(fuzzSecret, jwkset.JWKOptions{
		Marshal:  jwkset.JWKMarshalOptions{Private: true},
		Metadata: jwkset.JWKMetadataOptions{KID: fuzzHSKID, ALG: HS256},
	})
	if err != nil {
		panic(err)
	}
	keys, err := StaticKeys(ed, hs)
	if err != nil {
		panic(err)
	}
	v, err := NewVerifier(VerifierConfig{
		Issuers:    []Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}},
		Algorithms: []string{EdDSA, ES256, RS256, HS256},
		CacheSize:  -1,
		Now:        func() time.Time { return fuzzNow },
	})
	if err != nil {
		panic(err)
	}
	return v
})

// fuzzSeed is one corpus entry; valid says whether it verifies.
type fuzzSeed struct {
	name  string
	token string
	valid bool
}

func fuzzSeeds(t testing.TB) []fuzzSeed {
	valid := signRaw(t, jwt.SigningMethodEdDSA, fuzzEdKID, fuzzEd, fuzzClaims())
	h, p, s := segments(valid)
	header := func(m map[string]any) string { return b64(t, m) }
	// signed signs an arbitrary header and payload with the Ed25519 key:
	// a genuine signature over content the verifier must still refuse.
	signed := func(h, p string) string {
		return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(fuzzEd, []byte(h+"."+p)))
	}
	tampered := fuzzClaims()
	tampered.Permissions = []string{"admin"}
	// An Ed25519 signature is 86 base64url characters: padding adds "==".
	padded := s + "=="
	return []fuzzSeed{
		{"valid-eddsa", valid, true},
		{"valid-hs256", signRaw(t, jwt.SigningMethodHS256, fuzzHSKID, fuzzSecret, fuzzClaims()), true},
		{"alg-none", header(map[string]any{"alg": "none", "kid": fuzzEdKID, "typ": "JWT"}) + "." + p + ".", false},
		{"hs256-keyed-with-ed25519-public-key", signRaw(t, jwt.SigningMethodHS256, fuzzEdKID, []byte(fuzzEd.Public().(ed25519.PublicKey)), fuzzClaims()), false},
		{"hs256-under-ed25519-kid", signRaw(t, jwt.SigningMethodHS256, fuzzEdKID, fuzzSecret, fuzzClaims()), false},
		{"eddsa-under-secret-kid", header(map[string]any{"alg": "EdDSA", "kid": fuzzHSKID}) + "." + p + "." + s, false},
		{"tampered-payload", h + "." + b64(t, tampered) + "." + s, false},
		{"truncated", valid[:len(valid)-10], false},
		{"segment-flood", valid + strings.Repeat(".", 512), false},
		{"non-base64", "!!!.@@@.###", false},
		{"padded-base64", h + "." + p + "." + padded, false},
		{"crit-header-signed", signed(header(map[string]any{"alg": "EdDSA", "kid": fuzzEdKID, "crit": []string{"exp"}}), p), false},
		{"null-payload-signed", signed(h, base64.RawURLEncoding.EncodeToString([]byte("null"))), false},
		{"array-claims-signed", signed(h, b64(t, map[string]any{"iss": "shoal", "aud": []any{1, "shoal"}, "exp": 1e300, "permissions": "echo"})), false},
		{"over-max-size", strings.Repeat("A", DefaultMaxTokenSize+1), false},
	}
}

// FuzzVerify: Verify never panics, every refusal wraps ErrInvalidToken
// without quoting the token, and whatever verifies carries exactly the
// claims of the one valid token: a mutation can pass only if it is that
// token.
func FuzzVerify(f *testing.F) {
	for _, s := range fuzzSeeds(f)[:6] { // the rest are committed under testdata
		f.Add(s.token)
	}
	v := fuzzVerifier()
	want, err := v.Verify(context.Background(), fuzzSeeds(f)[0].token)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := v.Verify(context.Background(), raw)
		if err != nil {
			if c != nil {
				t.Fatal("claims returned with an error")
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error %v does not wrap ErrInvalidToken", err)
			}
			if len(raw) >= 16 && strings.Contains(raw, ".") && strings.Contains(err.Error(), raw) {
				t.Fatalf("error %q quotes the token", err)
			}
			return
		}
		if !reflect.DeepEqual(c, want) {
			t.Fatalf("%q verified with claims %+v, want those of the valid token, %+v", raw, c, want)
		}
		if _, aerr := v.Authorize(context.Background(), "Bearer "+raw, []string{"echo"}); aerr != nil {
			t.Fatalf("Verify accepts, Authorize refuses: %v", aerr)
		}
	})
}

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzVerify from fuzzSeeds")

// TestFuzzCorpus checks that the committed corpus is what fuzzSeeds makes,
// and that each seed verifies, or not, as intended. Run with
// -update-corpus to rewrite it.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	v := fuzzVerifier()
	var names []string
	for _, s := range fuzzSeeds(t) {
		names = append(names, s.name)
		if _, err := v.Verify(context.Background(), s.token); (err == nil) != s.valid {
			t.Errorf("seed %s: Verify error %v; valid should be %v", s.name, err, s.valid)
		}
		content := fmt.Sprintf("go test fuzz v1\nstring(%q)\n", s.token)
		path := filepath.Join(dir, s.name)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("seed %s: the committed corpus file is missing or stale (%v); run go test -run TestFuzzCorpus -update-corpus", s.name, err)
		}
	}
	if *updateCorpus {
		return
	}
	// New inputs the fuzzer found and saved are welcome; files claiming a
	// seed's name but gone from fuzzSeeds are not.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.Contains(names, e.Name()) && !isFuzzerName(e.Name()) {
			t.Errorf("corpus file %s is not a seed of fuzzSeeds", e.Name())
		}
	}
}

// isFuzzerName reports whether name looks like a file the fuzzer wrote: a
// hex hash.
func isFuzzerName(name string) bool {
	if len(name) < 16 {
		return false
	}
	for _, c := range name {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}
