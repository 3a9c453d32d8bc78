package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Key sizes.
const (
	// MinRSABits is the smallest RSA modulus accepted, for signing and for
	// verifying.
	MinRSABits = 2048
	// MinSecretBytes is the shortest HS256 secret accepted: RFC 7518
	// section 3.2 asks for at least the size of the hash.
	MinSecretBytes = 32

	generatedRSABits = 3072
)

// methods are the signing algorithms Shoal knows, by alg.
var methods = map[string]jwt.SigningMethod{
	EdDSA: jwt.SigningMethodEdDSA,
	ES256: jwt.SigningMethodES256,
	RS256: jwt.SigningMethodRS256,
	HS256: jwt.SigningMethodHS256,
}

const knownAlgorithms = "EdDSA, ES256, RS256 or HS256"

// Why a key cannot verify (or make) a signature of some algorithm.
var (
	errKeyForEncryption = errors.New(`the key is an encryption key (use "enc")`)
	errKeyOtherAlg      = errors.New("the key's alg is another algorithm")
	errKeyOps           = errors.New("the key's key_ops allow neither sign nor verify")
	errKeyType          = map[string]error{
		EdDSA: errors.New("the key is not an Ed25519 key"),
		ES256: errors.New("the key is not a P-256 ECDSA key"),
		RS256: fmt.Errorf("the key is not an RSA key of %d bits or more", MinRSABits),
		HS256: fmt.Errorf("the key is not a secret (kty oct) of %d bytes or more", MinSecretBytes),
	}
)

// GenerateKey returns a new private signing key for alg as a JWK with alg
// set, use "sig" and a fresh kid: "shoal-", today's date and 8 random hex
// digits, so that a key list reads in order of creation. EdDSA makes an
// Ed25519 key, ES256 a P-256 key, RS256 a 3072-bit RSA key and HS256 a
// 32-byte random secret (kty "oct").
func GenerateKey(alg string) (jwkset.JWK, error) {
	var (
		key any
		err error
	)
	switch alg {
	case EdDSA:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case ES256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RS256:
		key, err = rsa.GenerateKey(rand.Reader, generatedRSABits)
	case HS256:
		secret := make([]byte, MinSecretBytes)
		rand.Read(secret) // never fails
		key = secret
	default:
		return jwkset.JWK{}, fmt.Errorf("token: cannot generate a key for algorithm %q; use %s", alg, knownAlgorithms)
	}
	if err != nil {
		return jwkset.JWK{}, fmt.Errorf("token: generate %s key: %w", alg, err)
	}
	k, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{
		Marshal:  jwkset.JWKMarshalOptions{Private: true},
		Metadata: jwkset.JWKMetadataOptions{ALG: jwkset.ALG(alg), KID: newKeyID(time.Now()), USE: jwkset.UseSig},
	})
	if err != nil {
		return jwkset.JWK{}, fmt.Errorf("token: generate %s key: %w", alg, err)
	}
	return k, nil
}

func newKeyID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:]) // never fails
	return "shoal-" + now.UTC().Format("20060102") + "-" + hex.EncodeToString(b[:])
}

// ReadKeyFile reads a key file: a JWK set, {"keys": [...]}, of private
// signing keys, oldest first; the last key is the one that signs. Every
// key needs a kid, unique in the file, and an alg Shoal signs with, and
// must hold its private half. A missing file gives an error that matches
// fs.ErrNotExist.
func ReadKeyFile(path string) ([]jwkset.JWK, error) {
	raws, err := readKeySet(path)
	if err != nil {
		return nil, err
	}
	keys := make([]jwkset.JWK, len(raws))
	for i, raw := range raws {
		keys[i], err = jwkset.NewJWKFromRawJSON(raw, jwkset.JWKMarshalOptions{Private: true}, jwkset.JWKValidateOptions{})
		if err != nil {
			return nil, fmt.Errorf("token: key file %s: key %d: %w", path, i, err)
		}
	}
	if err := checkSigningKeys(keys); err != nil {
		return nil, fmt.Errorf("token: key file %s: %w", path, err)
	}
	return keys, nil
}

// readKeySet reads a JWK set file and splits it into its keys, still
// JSON. A missing file gives an error that matches fs.ErrNotExist.
func readKeySet(path string) ([]json.RawMessage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: read key file: %w", err)
	}
	raws, err := decodeKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("token: key file %s: %w", path, err)
	}
	return raws, nil
}

// decodeKeySet splits a JWK set into its keys, still JSON.
func decodeKeySet(data []byte) ([]json.RawMessage, error) {
	var set struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %s", jsonError(data, err))
	}
	switch {
	case set.Keys == nil:
		return nil, errors.New(`not a JSON Web Key Set: no "keys" array`)
	case len(*set.Keys) == 0:
		return nil, errors.New("the key set is empty")
	}
	return *set.Keys, nil
}

// jsonError describes a JSON decoding error with the line and column it
// happened at, when it has an offset.
func jsonError(data []byte, err error) string {
	var off int64 = -1
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		off = syn.Offset - 1 // the offset is past the offending byte
	case errors.As(err, &typ):
		off = typ.Offset
	}
	if off < 0 || off > int64(len(data)) {
		return err.Error()
	}
	line, col := 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return fmt.Sprintf("line %d, column %d: %v", line, col, err)
}

// checkSigningKeys checks that keys can make a key file.
func checkSigningKeys(keys []jwkset.JWK) error {
	if len(keys) == 0 {
		return errors.New("the key set is empty")
	}
	seen := make(map[string]int, len(keys))
	for i, k := range keys {
		kid := k.Marshal().KID
		if j, dup := seen[kid]; dup && kid != "" {
			return fmt.Errorf("keys %d and %d have the same kid %q; every key needs its own", j, i, kid)
		}
		seen[kid] = i
		if _, _, err := signingKey(k); err != nil {
			if kid == "" {
				return fmt.Errorf("key %d: %w", i, err)
			}
			return fmt.Errorf("key %d (kid %q): %w", i, kid, err)
		}
	}
	return nil
}

// signingKey returns the algorithm and private key k signs with, or why
// it cannot sign.
func signingKey(k jwkset.JWK) (alg string, key any, err error) {
	m := k.Marshal()
	alg = string(m.ALG)
	switch {
	case m.KID == "":
		return "", nil, errors.New("the key has no kid; tokens name their key by kid")
	case alg == "":
		return "", nil, fmt.Errorf("the key has no alg; set it to %s", knownAlgorithms)
	case methods[alg] == nil:
		return "", nil, fmt.Errorf("the key's alg %q is not one Shoal signs with (%s)", alg, knownAlgorithms)
	case m.USE == jwkset.UseEnc:
		return "", nil, errors.New(`the key is an encryption key (use "enc"), not a signing key`)
	}
	key = k.Key()
	switch key := key.(type) {
	case ed25519.PublicKey, *ecdsa.PublicKey, *rsa.PublicKey:
		return "", nil, errors.New("the key holds only its public half; signing needs the private key")
	case *rsa.PrivateKey:
		if key.N.BitLen() < MinRSABits {
			return "", nil, fmt.Errorf("the RSA key has %d bits; at least %d are needed", key.N.BitLen(), MinRSABits)
		}
	case []byte:
		if len(key) < MinSecretBytes {
			return "", nil, fmt.Errorf("the HS256 secret has %d bytes; at least %d are needed", len(key), MinSecretBytes)
		}
	}
	if _, err := verificationKey(k, alg); err != nil {
		return "", nil, err
	}
	return alg, key, nil
}

// verificationKey returns the key that checks an alg signature, taken
// from k: the public half of an asymmetric key, the bytes of a secret. It
// refuses a key whose type does not fit alg, whose own alg is another or
// that is meant for encryption: these checks are what stop algorithm
// confusion.
func verificationKey(k jwkset.JWK, alg string) (any, error) {
	m := k.Marshal()
	switch {
	case m.USE == jwkset.UseEnc:
		return nil, errKeyForEncryption
	case m.ALG != "" && string(m.ALG) != alg:
		return nil, errKeyOtherAlg
	case len(m.KEYOPS) > 0 && !canVerify(m.KEYOPS):
		return nil, errKeyOps
	}
	switch alg {
	case EdDSA:
		switch key := k.Key().(type) {
		case ed25519.PublicKey:
			if len(key) == ed25519.PublicKeySize {
				return key, nil
			}
		case ed25519.PrivateKey:
			if len(key) == ed25519.PrivateKeySize {
				return key.Public(), nil
			}
		}
	case ES256:
		switch key := k.Key().(type) {
		case *ecdsa.PublicKey:
			if key.Curve == elliptic.P256() {
				return key, nil
			}
		case *ecdsa.PrivateKey:
			if key.Curve == elliptic.P256() {
				return &key.PublicKey, nil
			}
		}
	case RS256:
		switch key := k.Key().(type) {
		case *rsa.PublicKey:
			if key.N.BitLen() >= MinRSABits {
				return key, nil
			}
		case *rsa.PrivateKey:
			if key.N.BitLen() >= MinRSABits {
				return &key.PublicKey, nil
			}
		}
	case HS256:
		if key, ok := k.Key().([]byte); ok && len(key) >= MinSecretBytes {
			return key, nil
		}
	}
	return nil, errKeyType[alg]
}

func canVerify(ops []jwkset.KEYOPS) bool {
	for _, op := range ops {
		if op == jwkset.KeyOpsVerify || op == jwkset.KeyOpsSign {
			return true
		}
	}
	return false
}

// WriteKeyFile writes keys, private, as a key file: a JWK set readable
// by ReadKeyFile, oldest first. It replaces the file atomically (a
// temporary file in the same directory, then a rename), so that a
// FileSigner never reads half a file; the file's mode is 0600, and a
// missing directory is created with mode 0700.
func WriteKeyFile(path string, keys []jwkset.JWK) error {
	if err := checkSigningKeys(keys); err != nil {
		return fmt.Errorf("token: write key file %s: %w", path, err)
	}
	set := jwkset.JWKSMarshal{Keys: make([]jwkset.JWKMarshal, 0, len(keys))}
	for _, k := range keys {
		// Marshal again with the private half: a JWK made without the
		// Private option would otherwise lose it.
		m := k.Marshal()
		pk, err := jwkset.NewJWKFromKey(k.Key(), jwkset.JWKOptions{
			Marshal:  jwkset.JWKMarshalOptions{Private: true},
			Metadata: jwkset.JWKMetadataOptions{ALG: m.ALG, KID: m.KID, USE: m.USE, KEYOPS: m.KEYOPS},
		})
		if err != nil {
			return fmt.Errorf("token: write key file %s: key %q: %w", path, m.KID, err)
		}
		set.Keys = append(set.Keys, pk.Marshal())
	}
	data, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return fmt.Errorf("token: write key file %s: %w", path, err)
	}
	if err := writeFileAtomic(path, append(data, '\n')); err != nil {
		return fmt.Errorf("token: write key file: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// CreateTemp makes the file with mode 0600.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable; not every system can sync a
	// directory, and the file is in place either way.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// Public returns the public half of a private asymmetric JWK, with the
// same kid, alg and use; a public key is returned as such. A shared
// secret (HS256, kty "oct") has no public half: that is an error.
func Public(k jwkset.JWK) (jwkset.JWK, error) {
	m := k.Marshal()
	var pub any
	switch key := k.Key().(type) {
	case []byte:
		return jwkset.JWK{}, fmt.Errorf("token: key %q is a shared secret (HS256) and has no public half", m.KID)
	case ed25519.PrivateKey:
		pub = key.Public()
	case *ecdsa.PrivateKey:
		pub = &key.PublicKey
	case *rsa.PrivateKey:
		pub = &key.PublicKey
	case ed25519.PublicKey, *ecdsa.PublicKey, *rsa.PublicKey:
		pub = key
	default:
		return jwkset.JWK{}, fmt.Errorf("token: key %q is a %T, which Shoal does not sign with", m.KID, key)
	}
	p, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{ALG: m.ALG, KID: m.KID, USE: m.USE},
	})
	if err != nil {
		return jwkset.JWK{}, fmt.Errorf("token: public half of key %q: %w", m.KID, err)
	}
	return p, nil
}

// PublicJWKS returns the JWK set, as JSON, of the public halves of keys,
// leaving out shared secrets: what /.well-known/jwks.json serves.
func PublicJWKS(keys []jwkset.JWK) ([]byte, error) {
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		if _, secret := k.Key().([]byte); secret {
			continue
		}
		p, err := Public(k)
		if err != nil {
			return nil, err
		}
		set.Keys = append(set.Keys, p.Marshal())
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("token: encode JWKS: %w", err)
	}
	return b, nil
}
