package broker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nkeys"
)

// PublicKeyFile is the path of a role's public-key file in dir, ROLE.pub:
// one line, the role's public NKey. A NATS server needs only these.
func PublicKeyFile(dir string, role Role) string {
	return filepath.Join(dir, string(role)+".pub")
}

// LoadCredentials loads the role identities from dir without creating
// anything. For each role, dir holds the seed file ROLE.nk or the
// public-key file ROLE.pub, so that a NATS server can be given the public
// keys only; [Credentials.SeedFile] of a role known by its public key
// names a file that does not exist.
func LoadCredentials(dir string) (*Credentials, error) {
	c := &Credentials{Dir: dir, Public: map[Role]string{}}
	for _, role := range Roles {
		pub, err := loadPublicKey(c.SeedFile(role), PublicKeyFile(dir, role))
		if err != nil {
			return nil, fmt.Errorf("nats credentials for role %s: %w", role, err)
		}
		c.Public[role] = pub
	}
	return c, nil
}

// loadPublicKey returns the public user key of the seed in seedFile or,
// when that does not exist, the one in pubFile. When both exist they must
// agree.
func loadPublicKey(seedFile, pubFile string) (string, error) {
	fromSeed, err := publicKeyOfSeed(seedFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	fromPub, pubErr := readPublicKey(pubFile)
	switch {
	case pubErr != nil && !errors.Is(pubErr, fs.ErrNotExist):
		return "", pubErr
	case err == nil && pubErr == nil && fromSeed != fromPub:
		return "", fmt.Errorf("%s and %s hold different identities; remove the stale one", seedFile, pubFile)
	case err == nil:
		return fromSeed, nil
	case pubErr == nil:
		return fromPub, nil
	}
	return "", fmt.Errorf("neither %s nor %s exists", seedFile, pubFile)
}

func publicKeyOfSeed(path string) (string, error) {
	seed, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return "", fmt.Errorf("%s is not an NKey user seed: %w", path, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("%s is not an NKey user seed (its public key %s does not start with U)", path, pub)
	}
	return pub, nil
}

func readPublicKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pub := strings.TrimSpace(string(b))
	if strings.ContainsAny(pub, "\r\n") || !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("%s is not a public NKey user key (want one line starting with U)", path)
	}
	return pub, nil
}
