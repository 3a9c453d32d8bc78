package token

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
)

// decodeSegment decodes a token segment as a JSON object.
func decodeSegment(t *testing.T, seg string) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSign(t *testing.T) {
	clk := newClock(t0.Add(700 * time.Millisecond)) // sub-second: claims count whole seconds
	all := []jwkset.JWK{testKey(EdDSA), testKey(ES256), testKey(RS256), testKey(HS256)}
	v := mustVerifier(t, mustStatic(t, all...), VerifierConfig{Now: clk.now, CacheSize: -1, Algorithms: []string{EdDSA, ES256, RS256, HS256}})
	for _, k := range all {
		alg := string(k.Marshal().ALG)
		t.Run(alg, func(t *testing.T) {
			s, err := NewSigner(k, "shoal", "shoal")
			if err != nil {
				t.Fatal(err)
			}
			s.now = clk.now
			if s.KeyID() != kidOf(k) {
				t.Errorf("KeyID %q, want %q", s.KeyID(), kidOf(k))
			}
			raw, exp, err := s.Sign("alice", []string{"echo", "ping"}, 90*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if want := t0.Add(90 * time.Minute); !exp.Equal(want) {
				t.Errorf("expiry %v, want %v", exp, want)
			}
			h, p, _ := segments(raw)
			header := decodeSegment(t, h)
			if header["alg"] != alg || header["kid"] != kidOf(k) || header["typ"] != "JWT" || len(header) != 3 {
				t.Errorf("header %v", header)
			}
			payload := decodeSegment(t, p)
			if got, want := slices.Sorted(maps.Keys(payload)), []string{"aud", "exp", "iat", "iss", "jti", "nbf", "permissions", "sub"}; !slices.Equal(got, want) {
				t.Errorf("claims %v, want %v", got, want)
			}
			c, err := v.Verify(t.Context(), raw)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if c.Subject != "alice" || c.Issuer != "shoal" || !slices.Equal(c.Audience, []string{"shoal"}) ||
				!slices.Equal(c.Permissions, []string{"echo", "ping"}) ||
				!c.IssuedAt.Equal(t0) || !c.NotBefore.Equal(t0) || !c.ExpiresAt.Equal(exp) {
				t.Errorf("claims %+v", c)
			}
			if id, err := base64.RawURLEncoding.DecodeString(c.ID); err != nil || len(id) != 16 {
				t.Errorf("jti %q is not 128 random bits in base64url", c.ID)
			}
		})
	}
}

func TestSignChecks(t *testing.T) {
	s, err := NewSigner(testKey(EdDSA), "shoal", "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		subject string
		perms   []string
		ttl     time.Duration
		want    string // in the error; "" for none
	}{
		{"a second", "alice", nil, time.Second, ""},
		{"MaxTTL", "alice", nil, MaxTTL, ""},
		{"no lifetime", "alice", nil, 0, "shorter than a second"},
		{"negative lifetime", "alice", nil, -time.Hour, "shorter than a second"},
		{"under a second", "alice", nil, 500 * time.Millisecond, "shorter than a second"},
		{"over MaxTTL", "alice", nil, MaxTTL + time.Second, "longer than"},
		{"no subject", "", nil, time.Hour, "subject"},
		{"empty permission", "alice", []string{"echo", ""}, time.Hour, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.Sign(tt.subject, tt.perms, tt.ttl)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Sign: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}

	// Without an audience there is no aud; without permissions, an empty
	// list rather than null.
	raw, _, err := s.Sign("alice", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := segments(raw)
	payload := decodeSegment(t, p)
	if _, ok := payload["aud"]; ok {
		t.Errorf("aud %v without an audience", payload["aud"])
	}
	if perms, ok := payload["permissions"].([]any); !ok || len(perms) != 0 {
		t.Errorf("permissions %v, want []", payload["permissions"])
	}
	// Every token has its own jti.
	other, _, _ := s.Sign("alice", nil, time.Hour)
	_, p2, _ := segments(other)
	if decodeSegment(t, p2)["jti"] == payload["jti"] {
		t.Error("two tokens with one jti")
	}
	// The permissions are copied: the caller may reuse its slice.
	perms := []string{"echo"}
	raw, _, _ = s.Sign("alice", perms, time.Hour)
	perms[0] = "admin"
	if _, p, _ := segments(raw); !strings.Contains(string(mustDecode(t, p)), `"echo"`) {
		t.Error("the token changed with the caller's slice")
	}
}

func mustDecode(t *testing.T, seg string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewSignerRefuses(t *testing.T) {
	pub, _ := Public(testKey(EdDSA))
	enc := newJWK(t, testKey(ES256).Key(), jwkset.JWKMetadataOptions{KID: "enc", ALG: ES256, USE: jwkset.UseEnc})
	noKID := newJWK(t, testKey(ES256).Key(), jwkset.JWKMetadataOptions{ALG: ES256})
	noAlg := newJWK(t, testKey(ES256).Key(), jwkset.JWKMetadataOptions{KID: "no-alg"})
	wrongAlg := newJWK(t, testKey(ES256).Key(), jwkset.JWKMetadataOptions{KID: "wrong", ALG: RS256})
	tests := []struct {
		name   string
		key    jwkset.JWK
		issuer string
		want   string
	}{
		{"no issuer", testKey(EdDSA), "", "issuer"},
		{"public key", pub, "shoal", "public half"},
		{"encryption key", enc, "shoal", "encryption"},
		{"no kid", noKID, "shoal", "no kid"},
		{"no alg", noAlg, "shoal", "no alg"},
		{"alg that does not fit the key", wrongAlg, "shoal", "not an RSA key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewSigner(tt.key, tt.issuer, "shoal"); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestFileSignerRotation: a key appended to the file signs the next token,
// with no new FileSigner; a broken file leaves the last good key signing
// and is reported by Err.
func TestFileSignerRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "signing.jwks")
	k1, k2, k3 := testKey(EdDSA), testKey(ES256), testKey(RS256)
	if err := WriteKeyFile(path, []jwkset.JWK{k1}); err != nil {
		t.Fatal(err)
	}
	s, err := NewFileSigner(path, "shoal", "shoal")
	if err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, mustStatic(t, k1, k2, k3), VerifierConfig{CacheSize: -1})
	signs := func(want jwkset.JWK) {
		t.Helper()
		raw, _, err := s.Sign("alice", []string{"echo"}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		h, _, _ := segments(raw)
		if kid := decodeSegment(t, h)["kid"]; kid != kidOf(want) {
			t.Fatalf("signed with kid %v, want %s", kid, kidOf(want))
		}
		if _, err := v.Verify(t.Context(), raw); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	signs(k1)

	if err := WriteKeyFile(path, []jwkset.JWK{k1, k2}); err != nil {
		t.Fatal(err)
	}
	signs(k2)
	if s.KeyID() != kidOf(k2) || s.Err() != nil {
		t.Errorf("KeyID %s, Err %v", s.KeyID(), s.Err())
	}

	// A botched edit: the last good key signs on, and Err says why.
	if err := os.WriteFile(path, []byte(`{"keys": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	signs(k2)
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "not a JSON Web Key Set") {
		t.Errorf("Err() = %v after a broken file", err)
	}
	if err := WriteKeyFile(path, []jwkset.JWK{k2, k3}); err != nil {
		t.Fatal(err)
	}
	signs(k3)
	if err := s.Err(); err != nil {
		t.Errorf("Err() = %v after the file was repaired", err)
	}

	// The file gone: the same.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	signs(k3)
	if err := s.Err(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Err() = %v with the file gone", err)
	}
	if err := WriteKeyFile(path, []jwkset.JWK{k3, k1}); err != nil {
		t.Fatal(err)
	}
	signs(k1)
	if err := s.Err(); err != nil {
		t.Errorf("Err() = %v with the file back", err)
	}
}

func TestNewFileSignerErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewFileSigner(filepath.Join(dir, "missing"), "shoal", "shoal"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileSigner(bad, "shoal", "shoal"); err == nil {
		t.Error("NewFileSigner accepted a file without keys")
	}
	good := filepath.Join(dir, "good")
	if err := WriteKeyFile(good, []jwkset.JWK{testKey(EdDSA)}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileSigner(good, "", "shoal"); err == nil {
		t.Error("NewFileSigner accepted no issuer")
	}
}

// TestFileSignerConcurrent signs from many goroutines while the key file
// rotates; run with -race.
func TestFileSignerConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.jwks")
	keys := []jwkset.JWK{testKey(EdDSA)}
	if err := WriteKeyFile(path, keys); err != nil {
		t.Fatal(err)
	}
	s, err := NewFileSigner(path, "shoal", "shoal")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				if _, _, err := s.Sign("alice", nil, time.Minute); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 5 {
		k, err := GenerateKey(EdDSA)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		if err := WriteKeyFile(path, keys); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if s.KeyID() != kidOf(keys[len(keys)-1]) || s.Err() != nil {
		t.Errorf("KeyID %s, Err %v; want the newest key", s.KeyID(), s.Err())
	}
}
