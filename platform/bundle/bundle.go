// Package bundle keeps functions' code in the NATS Object Store, addressed
// by content: `shoal deploy` packs each function's source directory into
// a deterministic archive and uploads it under its SHA-256 digest, and
// runners fetch the exact version a function's definition names into a
// local cache, verified and unpacked defensively.
//
// # Archive
//
// A bundle is a plain (uncompressed) POSIX tar archive of the tree, built
// so that the same tree always gives the same bytes, hence the same
// digest: entries sorted by path, every parent directory before its
// children, modification times at the Unix epoch, owner 0:0 with no names,
// and modes reduced to 0755 for directories and executables (any x bit)
// and 0644 for other files. It holds regular files, directories and
// symbolic links whose target is relative and stays inside the tree;
// anything else (a link out of the tree, a device, a fifo, a socket) is an
// error naming the path. Entries named .git, at any depth, are left out;
// nothing else is (there is no ignore file).
//
// The archive is not compressed so that its bytes, and so the digest, do
// not depend on a compressor's version; the bucket compresses what it
// stores (S2) instead.
//
// # Store
//
// The bucket [Bucket] holds one object per digest, named by [Digest.Name],
// with the size, entry count and the function that first uploaded it in
// the object's metadata. The same code deployed for two functions is one
// object.
//
// # Cache
//
// [Store.Fetch] unpacks a digest into cacheDir/<hex>. The directory appears
// under that name only once it is complete (it is unpacked beside it and
// renamed into place), so whoever finds it there may use it at once; a
// lock file per digest makes the processes sharing a cache download each
// version once. The tree is the function's: it is never modified in place,
// and [Prune] removes the versions no longer wanted. Files are not synced
// to disk: after the machine itself crashes, a version may hold files
// cut short, so keep the cache where a reboot clears it, or clear it at
// boot.
package bundle

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Bucket is the Object Store bucket of function code.
const Bucket = "shoal_code"

// ErrNoBucket means the bucket does not exist: no code was ever deployed
// on this NATS.
var ErrNoBucket = errors.New("no code store on this NATS (object store bucket " + Bucket + " is missing); `shoal deploy -f fn.yaml` or `shoal up` creates it")

// ErrNotFound means no code of that digest is stored.
var ErrNotFound = errors.New("code not found")

// ErrCorrupt means code read from the store does not have the digest it is
// stored under.
var ErrCorrupt = errors.New("stored code does not match its digest")

// ErrLimit means a tree or an archive is larger, or has more entries, than
// the limits allow.
var ErrLimit = errors.New("code exceeds the limits")

// ErrUnsafe means an archive holds an entry that could write outside the
// directory it is unpacked into, or that is not a regular file, directory
// or symbolic link inside the tree.
var ErrUnsafe = errors.New("unsafe archive entry")

// Digest identifies a bundle: "sha256:" and the lower-case hex SHA-256 of
// its archive.
type Digest string

const digestPrefix = "sha256:"

// ParseDigest checks that s is a well-formed digest.
func ParseDigest(s string) (Digest, error) {
	hexPart, ok := strings.CutPrefix(s, digestPrefix)
	if !ok || len(hexPart) != 64 || strings.ToLower(hexPart) != hexPart {
		return "", fmt.Errorf("bundle: code digest %q: want sha256: and 64 lower-case hex digits", s)
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", fmt.Errorf("bundle: code digest %q: want sha256: and 64 lower-case hex digits", s)
	}
	return Digest(s), nil
}

// digestOf returns the digest of a SHA-256 sum.
func digestOf(sum []byte) Digest {
	return Digest(digestPrefix + hex.EncodeToString(sum))
}

// Hex returns the digest's hex part, the name of its cache directory.
func (d Digest) Hex() string { return strings.TrimPrefix(string(d), digestPrefix) }

// Name returns the name of the digest's object in the bucket.
func (d Digest) Name() string { return "sha256-" + d.Hex() }

// String returns the digest as written, sha256:<hex>.
func (d Digest) String() string { return string(d) }

// valid reports whether d is well-formed.
func (d Digest) valid() error {
	_, err := ParseDigest(string(d))
	return err
}

// Default limits.
const (
	DefaultMaxSize  = 256 << 20
	DefaultMaxFiles = 20000
)

// Limits bound a bundle. The zero value means the defaults.
type Limits struct {
	// MaxSize bounds the archive's size in bytes, which is the files'
	// contents plus at least 512 bytes per entry.
	MaxSize int64
	// MaxFiles bounds the number of entries: files, directories and
	// symbolic links.
	MaxFiles int
}

// orDefault fills in the defaults.
func (l Limits) orDefault() Limits {
	if l.MaxSize <= 0 {
		l.MaxSize = DefaultMaxSize
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	return l
}
