package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/MicahParks/jwkset"
)

func TestGenerateKey(t *testing.T) {
	kid := regexp.MustCompile(`^shoal-[0-9]{8}-[0-9a-f]{8}$`)
	for _, alg := range []string{EdDSA, ES256, RS256, HS256} {
		t.Run(alg, func(t *testing.T) {
			k := testKey(alg) // made by GenerateKey
			m := k.Marshal()
			if string(m.ALG) != alg || m.USE != jwkset.UseSig || !kid.MatchString(m.KID) {
				t.Errorf("alg %q, use %q, kid %q", m.ALG, m.USE, m.KID)
			}
			switch key := k.Key().(type) {
			case ed25519.PrivateKey:
				if alg != EdDSA {
					t.Errorf("an Ed25519 key for %s", alg)
				}
			case *ecdsa.PrivateKey:
				if alg != ES256 || key.Curve != elliptic.P256() {
					t.Errorf("an ECDSA key on %s for %s", key.Curve.Params().Name, alg)
				}
			case *rsa.PrivateKey:
				if alg != RS256 || key.N.BitLen() != 3072 {
					t.Errorf("an RSA key of %d bits for %s", key.N.BitLen(), alg)
				}
			case []byte:
				if alg != HS256 || len(key) != 32 || m.KTY != jwkset.KtyOct {
					t.Errorf("a secret of %d bytes, kty %s, for %s", len(key), m.KTY, alg)
				}
			default:
				t.Errorf("a %T for %s", key, alg)
			}
			if _, err := NewSigner(k, "shoal", "shoal"); err != nil {
				t.Errorf("the key cannot sign: %v", err)
			}
		})
	}
	a, _ := GenerateKey(EdDSA)
	b, _ := GenerateKey(EdDSA)
	if kidOf(a) == kidOf(b) {
		t.Errorf("two keys with kid %s", kidOf(a))
	}
	for _, alg := range []string{"", "none", "eddsa", "RS512", "PS256"} {
		if _, err := GenerateKey(alg); err == nil {
			t.Errorf("GenerateKey(%q) succeeded", alg)
		}
	}
}

// keyJSON returns k as private JSON, changed by edit.
func keyJSON(t *testing.T, k jwkset.JWK, edit func(m map[string]any)) json.RawMessage {
	t.Helper()
	pk, err := jwkset.NewJWKFromKey(k.Key(), jwkset.JWKOptions{
		Marshal:  jwkset.JWKMarshalOptions{Private: true},
		Metadata: jwkset.JWKMetadataOptions{ALG: k.Marshal().ALG, KID: k.Marshal().KID, USE: k.Marshal().USE},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(pk.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(m)
	}
	b, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func keySetJSON(t *testing.T, keys ...json.RawMessage) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReadKeyFile(t *testing.T) {
	ed, es := testKey(EdDSA), testKey(ES256)
	edPublic, err := Public(ed)
	if err != nil {
		t.Fatal(err)
	}
	edPublicJSON, _ := json.Marshal(edPublic.Marshal())
	shortSecret := newJWK(t, []byte("too short"), jwkset.JWKMetadataOptions{KID: "short", ALG: HS256})
	tests := []struct {
		name string
		file string // "" for no file
		want string // in the error; "" for none
	}{
		{"two keys", keySetJSON(t, keyJSON(t, ed, nil), keyJSON(t, es, nil)), ""},
		{"every algorithm", keySetJSON(t, keyJSON(t, ed, nil), keyJSON(t, es, nil), keyJSON(t, testKey(RS256), nil), keyJSON(t, testKey(HS256), nil)), ""},
		{"missing file", "", "no such file"},
		{"bad JSON", "{\n  \"keys\": [\n    {,\n  ]\n}", "line 3, column 6"},
		{"not an object", `[1, 2]`, "not a JSON Web Key Set"},
		{"no keys array", `{"kty": "OKP"}`, `no "keys" array`},
		{"keys not an array", `{"keys": {}}`, "not a JSON Web Key Set"},
		{"empty set", `{"keys": []}`, "empty"},
		{"key without kid", keySetJSON(t, keyJSON(t, ed, func(m map[string]any) { delete(m, "kid") })), "key 0: the key has no kid"},
		{"key without alg", keySetJSON(t, keyJSON(t, es, func(m map[string]any) { delete(m, "alg") })), "has no alg"},
		{"key with an unknown alg", keySetJSON(t, keyJSON(t, es, func(m map[string]any) { m["alg"] = "ES384" })), `alg "ES384"`},
		{"key with the wrong alg", keySetJSON(t, keyJSON(t, es, func(m map[string]any) { m["alg"] = RS256 })), "not an RSA key"},
		{"encryption key", keySetJSON(t, keyJSON(t, es, func(m map[string]any) { m["use"] = "enc" })), "encryption key"},
		{"public key only", keySetJSON(t, edPublicJSON), "only its public half"},
		{"RSA key missing its CRT values", keySetJSON(t, keyJSON(t, testKey(RS256), func(m map[string]any) { delete(m, "dp") })), "only its public half"},
		{"duplicate kid", keySetJSON(t, keyJSON(t, ed, nil), keyJSON(t, es, func(m map[string]any) { m["kid"] = kidOf(ed) })), "keys 0 and 1 have the same kid"},
		{"short secret", keySetJSON(t, keyJSON(t, shortSecret, nil)), "9 bytes; at least 32"},
		{"broken key", keySetJSON(t, keyJSON(t, ed, func(m map[string]any) { m["x"] = "!!" })), "key 0: failed to unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "signing.jwks")
			if tt.file != "" {
				if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			keys, err := ReadKeyFile(path)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("ReadKeyFile: %v", err)
				}
				if len(keys) < 2 || kidOf(keys[0]) != kidOf(ed) || kidOf(keys[1]) != kidOf(es) {
					t.Errorf("keys out of order or missing")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
			if tt.file != "" && !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	if _, err := ReadKeyFile(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v does not match fs.ErrNotExist", err)
	}
}

func TestWriteKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "keys")
	path := filepath.Join(dir, "signing.jwks")
	keys := []jwkset.JWK{testKey(EdDSA), testKey(ES256), testKey(RS256), testKey(HS256)}
	if err := WriteKeyFile(path, keys); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v (%v), want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v (%v), want 0700", fi.Mode(), err)
	}
	got, err := ReadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys) {
		t.Fatalf("%d keys back, want %d", len(got), len(keys))
	}
	for i := range keys {
		a, b := keys[i].Marshal(), got[i].Marshal()
		if a.KID != b.KID || a.ALG != b.ALG || a.D != b.D || a.K != b.K || a.X != b.X || a.N != b.N {
			t.Errorf("key %d changed on the way through the file", i)
		}
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the key file", len(entries))
	}

	// A key made without jwkset's Private option keeps its private half.
	bare, err := jwkset.NewJWKFromKey(testKey(EdDSA).Key(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "bare", ALG: EdDSA}})
	if err != nil {
		t.Fatal(err)
	}
	if bare.Marshal().D != "" {
		t.Fatal("test assumption: jwkset marshals the private half without the Private option")
	}
	if err := WriteKeyFile(path, []jwkset.JWK{bare}); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadKeyFile(path); err != nil || got[0].Marshal().D == "" {
		t.Errorf("private half lost: %v", err)
	}

	// Keys that could not be read back are not written.
	pub, _ := Public(testKey(EdDSA))
	for name, keys := range map[string][]jwkset.JWK{"none": nil, "public": {pub}, "duplicate": {testKey(EdDSA), testKey(EdDSA)}} {
		if err := WriteKeyFile(path, keys); err == nil {
			t.Errorf("%s: WriteKeyFile succeeded", name)
		}
	}
	if got, err := ReadKeyFile(path); err != nil || kidOf(got[0]) != "bare" {
		t.Errorf("a refused write changed the file: %v", err)
	}
}

func TestPublic(t *testing.T) {
	for _, alg := range []string{EdDSA, ES256, RS256} {
		t.Run(alg, func(t *testing.T) {
			k := testKey(alg)
			p, err := Public(k)
			if err != nil {
				t.Fatal(err)
			}
			pm, km := p.Marshal(), k.Marshal()
			if pm.KID != km.KID || pm.ALG != km.ALG || pm.USE != km.USE || pm.D != "" || pm.P != "" {
				t.Errorf("public half %+v", pm)
			}
			again, err := Public(p)
			if err != nil || again.Marshal().X != pm.X || again.Marshal().N != pm.N {
				t.Errorf("Public of a public key: %v", err)
			}
			// It verifies what the private key signed.
			v := mustVerifier(t, mustStatic(t, p), VerifierConfig{Now: newClock(t0).now})
			if _, err := v.Verify(t.Context(), signWith(t, k, claimsAt(t0))); err != nil {
				t.Errorf("Verify with the public half: %v", err)
			}
		})
	}
	if _, err := Public(testKey(HS256)); err == nil || !strings.Contains(err.Error(), "shared secret") {
		t.Errorf("Public of a secret: %v", err)
	}
}

func TestPublicJWKS(t *testing.T) {
	b, err := PublicJWKS([]jwkset.JWK{testKey(EdDSA), testKey(HS256), testKey(ES256)})
	if err != nil {
		t.Fatal(err)
	}
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 || set.Keys[0].KID != kidOf(testKey(EdDSA)) || set.Keys[1].KID != kidOf(testKey(ES256)) {
		t.Errorf("JWKS %s", b)
	}
	for _, private := range []string{`"d"`, `"k"`, `"p"`} {
		if strings.Contains(string(b), private) {
			t.Errorf("JWKS holds private member %s: %s", private, b)
		}
	}
	if b, err := PublicJWKS([]jwkset.JWK{testKey(HS256)}); err != nil || string(b) != `{"keys":[]}` {
		t.Errorf("JWKS of a secret alone: %s, %v", b, err)
	}
}

func TestStaticKeys(t *testing.T) {
	ctx := t.Context()
	ks := mustStatic(t, testKey(EdDSA), testKey(HS256))
	k, err := ks.KeyRead(ctx, kidOf(testKey(EdDSA)))
	if err != nil {
		t.Fatal(err)
	}
	if _, private := k.Key().(ed25519.PrivateKey); private || k.Marshal().D != "" {
		t.Error("StaticKeys kept a private key")
	}
	if k, err := ks.KeyRead(ctx, kidOf(testKey(HS256))); err != nil || len(k.Key().([]byte)) != 32 {
		t.Errorf("secret: %v", err)
	}
	if _, err := ks.KeyRead(ctx, "nope"); !errors.Is(err, jwkset.ErrKeyNotFound) {
		t.Errorf("unknown kid: %v, want jwkset.ErrKeyNotFound", err)
	}

	noKID := newJWK(t, mustEd25519(t), jwkset.JWKMetadataOptions{ALG: EdDSA})
	enc := newJWK(t, testKey(ES256).Key(), jwkset.JWKMetadataOptions{KID: "enc", USE: jwkset.UseEnc})
	short := newJWK(t, []byte("short"), jwkset.JWKMetadataOptions{KID: "short"})
	other := newJWK(t, testKey(ES256).Key(), jwkset.JWKMetadataOptions{KID: "es384", ALG: "ES384"})
	weakKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak := newJWK(t, &weakKey.PublicKey, jwkset.JWKMetadataOptions{KID: "weak"})
	for name, tt := range map[string]struct {
		keys []jwkset.JWK
		want string
	}{
		"no keys":       {nil, "no keys"},
		"no kid":        {[]jwkset.JWK{noKID}, "no kid"},
		"duplicate kid": {[]jwkset.JWK{testKey(EdDSA), testKey(EdDSA)}, "same kid"},
		"encryption":    {[]jwkset.JWK{enc}, "encryption key"},
		"short secret":  {[]jwkset.JWK{short}, "5 bytes"},
		"unknown alg":   {[]jwkset.JWK{other}, `alg "ES384"`},
		"weak RSA":      {[]jwkset.JWK{weak}, "not an RSA key of 2048 bits or more"},
	} {
		if _, err := StaticKeys(tt.keys...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, tt.want)
		}
	}
}

func TestFileKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	edPub, _ := Public(testKey(EdDSA))
	edPubJSON, _ := json.Marshal(edPub.Marshal())
	encJSON := keyJSON(t, testKey(ES256), func(m map[string]any) { m["use"] = "enc"; m["kid"] = "enc"; delete(m, "d") })
	ed448 := json.RawMessage(`{"kty":"OKP","crv":"Ed448","kid":"ed448","x":"AAAA"}`)

	// An identity provider's set: a signing key, an encryption key and a
	// key type jwkset does not know. Only the first is kept.
	p := write("idp.json", keySetJSON(t, edPubJSON, encJSON, ed448))
	ks, err := FileKeys(p)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, ks, VerifierConfig{Now: newClock(t0).now})
	if _, err := v.Verify(t.Context(), signWith(t, testKey(EdDSA), claimsAt(t0))); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if _, err := ks.KeyRead(t.Context(), "enc"); !errors.Is(err, jwkset.ErrKeyNotFound) {
		t.Errorf("the encryption key was kept: %v", err)
	}

	// HS256 secrets as oct keys.
	p = write("secrets.json", keySetJSON(t, keyJSON(t, testKey(HS256), nil)))
	ks, err = FileKeys(p)
	if err != nil {
		t.Fatal(err)
	}
	v = mustVerifier(t, ks, VerifierConfig{Now: newClock(t0).now, Algorithms: []string{HS256}})
	if _, err := v.Verify(t.Context(), signWith(t, testKey(HS256), claimsAt(t0))); err != nil {
		t.Errorf("Verify HS256: %v", err)
	}

	for name, tt := range map[string]struct{ file, want string }{
		"nothing usable": {keySetJSON(t, encJSON), "no signing key"},
		"bad JSON":       {`{"keys": [}`, "line 1, column 11"},
		"duplicate kid":  {keySetJSON(t, edPubJSON, edPubJSON), "same kid"},
	} {
		if _, err := FileKeys(write(name, tt.file)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, tt.want)
		}
	}
	if _, err := FileKeys(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
