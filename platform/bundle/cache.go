package bundle

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names in a cache directory besides the versions, cacheDir/<hex>.
const (
	tmpPrefix   = ".tmp-"   // .tmp-<hex>-<random>: a version being unpacked
	lockPrefix  = ".lock-"  // .lock-<hex>: held by whoever fetches <hex>
	trashPrefix = ".trash-" // .trash-<hex>-<random>: a version being removed
)

// lockPoll is how often a Fetch waiting for another one's download looks
// again.
const lockPoll = 20 * time.Millisecond

// Fetch returns cacheDir/<hex>, the tree of the code of d, downloading
// and unpacking it first if it is not there yet. The directory appears
// only complete: it is unpacked into a temporary directory beside it and
// renamed into place once the SHA-256 of the downloaded bytes is found to
// be d; a mismatch is an ErrCorrupt and leaves nothing behind. Goroutines
// and processes sharing cacheDir may fetch the same digest at once: a lock
// file makes one of them download it while the others wait for it (as
// long as their ctx allows). Missing code is an ErrNotFound; code beyond
// the Store's limits an ErrLimit; an archive that is not a safe tree an
// ErrUnsafe (see Unpack).
func (s *Store) Fetch(ctx context.Context, d Digest, cacheDir string) (string, error) {
	if err := d.valid(); err != nil {
		return "", err
	}
	final := filepath.Join(cacheDir, d.Hex())
	if complete(final) {
		return final, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("bundle: code cache: %w", err)
	}
	lockPath := filepath.Join(cacheDir, lockPrefix+d.Hex())
	for {
		unlock, ok, err := tryLock(lockPath)
		if err != nil {
			return "", fmt.Errorf("bundle: code cache: %w", err)
		}
		if ok {
			defer unlock()
			break
		}
		if complete(final) {
			return final, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("bundle: fetch %s: waiting for another download of it into %s: %w", d, cacheDir, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	if complete(final) {
		return final, nil // fetched by whoever held the lock
	}
	tmp, err := os.MkdirTemp(cacheDir, tmpPrefix+d.Hex()+"-")
	if err != nil {
		return "", fmt.Errorf("bundle: code cache: %w", err)
	}
	if err := s.download(ctx, d, tmp); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	err = os.Chmod(tmp, 0o755) // MkdirTemp made it 0700
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.RemoveAll(tmp)
		if complete(final) {
			// Put there by a Fetch that took no lock (where there are no
			// locks, or after Prune removed the lock file).
			return final, nil
		}
		return "", fmt.Errorf("bundle: code cache: %w", err)
	}
	return final, nil
}

// complete reports whether the version at dir is there; being there, it
// is complete.
func complete(dir string) bool {
	fi, err := os.Lstat(dir)
	return err == nil && fi.IsDir()
}

// download unpacks the code of d into dst, verifying it.
func (s *Store) download(ctx context.Context, d Digest, dst string) error {
	info, err := s.obs.GetInfo(ctx, d.Name())
	if err != nil {
		return s.err(ctx, "fetch", d, err)
	}
	if info.Size > uint64(s.lim.MaxSize) {
		return fmt.Errorf("bundle: fetch %s: %w: it is %d bytes, more than %s", d, ErrLimit, info.Size, byteSize(s.lim.MaxSize))
	}
	// Reading an object waits for every chunk it records until ctx ends:
	// missing ones are better found at once.
	chunks, err := s.chunks(ctx, info)
	if err != nil {
		return s.err(ctx, "fetch", d, err)
	}
	if chunks != uint64(info.Chunks) {
		return fmt.Errorf("bundle: code %s is corrupt: the bucket holds %d of its %d chunks (%w); deploy it again to replace it", d, chunks, info.Chunks, ErrCorrupt)
	}
	res, err := s.obs.Get(ctx, d.Name())
	if err != nil {
		return s.err(ctx, "fetch", d, err)
	}
	defer res.Close()
	h := sha256.New()
	lr := &limitedReader{r: res, left: s.lim.MaxSize}
	tee := io.TeeReader(lr, h)
	_, uerr := Unpack(tee, dst, s.lim)
	// The rest (the archive's padding, or what was left after an error)
	// is read too: the digest is over every byte.
	_, rerr := io.Copy(io.Discard, tee)
	if errors.Is(uerr, jetstream.ErrDigestMismatch) || errors.Is(rerr, jetstream.ErrDigestMismatch) {
		return fmt.Errorf("bundle: code %s is corrupt: it does not match the digest NATS recorded for it (%w); deploy it again to replace it", d, ErrCorrupt)
	}
	if rerr == nil {
		if got := digestOf(h.Sum(nil)); got != d {
			return fmt.Errorf("bundle: code %s is corrupt: got %s (%w); deploy it again to replace it", d, got, ErrCorrupt)
		}
	}
	if uerr != nil {
		return fmt.Errorf("bundle: fetch %s: %w", d, uerr)
	}
	if rerr != nil {
		if lr.over {
			return fmt.Errorf("bundle: fetch %s: %w: the archive is larger than %s", d, ErrLimit, byteSize(s.lim.MaxSize))
		}
		return fmt.Errorf("bundle: fetch %s: %w", d, rerr)
	}
	return nil
}

// Prune removes from cacheDir the versions not in keep, and what failed
// or interrupted fetches left behind, and returns the digests removed.
// Versions being fetched are left alone. A removed version disappears
// from its name at once (it is renamed before it is deleted), so the
// caller must be sure no function still runs from it. A missing cacheDir
// holds nothing to prune. On a file system without locks, Prune cannot
// tell a fetch under way from one that died: run it when none runs.
func Prune(cacheDir string, keep []Digest) (removed []Digest, err error) {
	des, err := os.ReadDir(cacheDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bundle: prune code cache: %w", err)
	}
	kept := map[string]bool{}
	for _, d := range keep {
		kept[d.Hex()] = true
	}
	var errs []error
	// Each version is pruned under its lock, taken without waiting: one
	// held is being fetched.
	withLock := func(hexPart string, f func()) {
		unlock, ok, err := tryLock(filepath.Join(cacheDir, lockPrefix+hexPart))
		if err != nil {
			errs = append(errs, err)
			return
		}
		if ok {
			f()
			unlock()
		}
	}
	remove := func(name string) {
		if err := os.RemoveAll(filepath.Join(cacheDir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	for _, de := range des {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, trashPrefix):
			remove(name)
		case strings.HasPrefix(name, tmpPrefix):
			hexPart, _, _ := strings.Cut(strings.TrimPrefix(name, tmpPrefix), "-")
			if isHex(hexPart) {
				withLock(hexPart, func() { remove(name) })
			}
		case strings.HasPrefix(name, lockPrefix):
			// Removing a lock file another Fetch is about to take only
			// costs a second download: the rename into place settles it.
			if hexPart := strings.TrimPrefix(name, lockPrefix); isHex(hexPart) && !kept[hexPart] && !complete(filepath.Join(cacheDir, hexPart)) {
				withLock(hexPart, func() { remove(name) })
			}
		case isHex(name) && !kept[name]:
			withLock(name, func() {
				trash, err := os.MkdirTemp(cacheDir, trashPrefix+name+"-")
				if err != nil {
					errs = append(errs, err)
					return
				}
				if err := os.Rename(filepath.Join(cacheDir, name), filepath.Join(trash, name)); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, Digest(digestPrefix+name))
				}
				remove(filepath.Base(trash))
				remove(lockPrefix + name)
			})
		}
	}
	slices.Sort(removed)
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("bundle: prune code cache: %w", err)
	}
	return removed, nil
}

// isHex reports whether s is the hex part of a digest.
func isHex(s string) bool {
	_, err := ParseDigest(digestPrefix + s)
	return err == nil
}
