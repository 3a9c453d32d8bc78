package bundle

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Store reads and writes function code in the bucket.
type Store struct {
	js  jetstream.JetStream
	obs jetstream.ObjectStore
	lim Limits
}

// Option adjusts a Store.
type Option func(*Store)

// WithLimits sets the limits Fetch enforces on what it downloads (the
// defaults otherwise).
func WithLimits(l Limits) Option {
	return func(s *Store) { s.lim = l.orDefault() }
}

func newStore(js jetstream.JetStream, obs jetstream.ObjectStore, opts []Option) *Store {
	s := &Store{js: js, obs: obs, lim: Limits{}.orDefault()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Create creates the bucket with the given number of replicas (1 on a
// single server, 3 on a cluster) or updates an existing one to it;
// replicas 0 keeps an existing bucket as it is and creates a missing one
// with 1. It returns once the bucket answers reads (a new replicated
// bucket takes a moment), or when ctx ends.
func Create(ctx context.Context, js jetstream.JetStream, replicas int, opts ...Option) (*Store, error) {
	if replicas <= 0 {
		s, err := Open(ctx, js, opts...)
		if !errors.Is(err, ErrNoBucket) {
			return s, err
		}
	}
	obs, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      Bucket,
		Description: "Shoal: function code by digest",
		Replicas:    max(replicas, 1),
		Storage:     jetstream.FileStorage,
		// Archives are not compressed (see the package documentation);
		// the stream is.
		Compression: true,
	})
	if err != nil {
		return nil, fmt.Errorf("bundle: create bucket %s: %w", Bucket, err)
	}
	if err := readable(ctx, obs); err != nil {
		return nil, err
	}
	return newStore(js, obs, opts), nil
}

// readable waits until the bucket answers reads: a bucket just created
// with replicas answers direct gets only once its replicas are ready, and
// until then a read finds no responders.
func readable(ctx context.Context, obs jetstream.ObjectStore) error {
	for {
		_, err := obs.GetInfo(ctx, "readable-probe")
		if err == nil || errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("bundle: read bucket %s: %w", Bucket, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bundle: bucket %s does not answer reads yet: %w", Bucket, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Open opens the existing bucket; ErrNoBucket if there is none.
func Open(ctx context.Context, js jetstream.JetStream, opts ...Option) (*Store, error) {
	obs, err := js.ObjectStore(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoBucket
	}
	if err != nil {
		return nil, fmt.Errorf("bundle: open bucket %s: %w", Bucket, err)
	}
	return newStore(js, obs, opts), nil
}

// Metadata keys of an object.
const (
	metaFunction = "function"
	metaDigest   = "digest"
	metaFiles    = "files"
)

// Put uploads a bundle under its digest, recording function (the one it
// is packed for; informative) in its metadata. It uploads nothing when
// the bucket already holds an object of that digest with the bundle's
// size and SHA-256, and replaces one that does not match.
func (s *Store) Put(ctx context.Context, b *Bundle, function string) (uploaded bool, err error) {
	if err := b.Digest.valid(); err != nil {
		return false, err
	}
	want := natsDigest(b.Digest)
	info, err := s.obs.GetInfo(ctx, b.Digest.Name())
	switch {
	case err == nil && info.Size == uint64(b.Size) && info.Digest == want:
		chunks, err := s.chunks(ctx, info)
		if err != nil {
			return false, s.err(ctx, "look up", b.Digest, err)
		}
		if chunks == uint64(info.Chunks) {
			return false, nil
		}
		slog.Warn("bundle: stored code lost chunks; uploading it again", "digest", b.Digest, "chunks", chunks, "want", info.Chunks)
	case err == nil:
		slog.Warn("bundle: stored code does not match its digest; uploading it again", "digest", b.Digest, "stored_size", info.Size, "size", b.Size)
	case !errors.Is(err, jetstream.ErrObjectNotFound):
		return false, s.err(ctx, "look up", b.Digest, err)
	}
	r, err := b.Open()
	if err != nil {
		return false, err
	}
	defer r.Close()
	meta := jetstream.ObjectMeta{
		Name:        b.Digest.Name(),
		Description: fmt.Sprintf("code of function %s: %d files, directories and links; %s", function, b.Files, byteSize(b.Size)),
		Metadata: map[string]string{
			metaFunction: function,
			metaDigest:   string(b.Digest),
			metaFiles:    strconv.Itoa(b.Files),
		},
	}
	info, err = s.obs.Put(ctx, meta, r)
	if err != nil {
		return false, s.err(ctx, "upload", b.Digest, err)
	}
	if info.Digest != want || info.Size != uint64(b.Size) {
		// The archive changed since Pack: what was uploaded is not the
		// code of that digest.
		_ = s.obs.Delete(ctx, b.Digest.Name())
		return false, fmt.Errorf("bundle: upload %s: the archive changed after it was packed (%d bytes uploaded, %d packed); pack it again", b.Digest, info.Size, b.Size)
	}
	return true, nil
}

// chunks counts the chunks the bucket holds of an object (a purge of the
// stream may have removed them, and not its metadata).
func (s *Store) chunks(ctx context.Context, info *jetstream.ObjectInfo) (uint64, error) {
	subject := "$O." + Bucket + ".C." + info.NUID
	st, err := s.js.Stream(ctx, "OBJ_"+Bucket)
	if err != nil {
		return 0, err
	}
	si, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	return si.State.Subjects[subject], nil
}

// natsDigest is how the Object Store writes the SHA-256 d names.
func natsDigest(d Digest) string {
	sum, _ := hex.DecodeString(d.Hex())
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum)
}

// err wraps an error of an operation on the code of d.
func (s *Store) err(ctx context.Context, op string, d Digest, err error) error {
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("bundle: %s %s: %w in bucket %s; deploy it again", op, d, ErrNotFound, Bucket)
	}
	if s.gone(ctx, err) {
		return fmt.Errorf("bundle: %s %s: %w", op, d, ErrNoBucket)
	}
	return fmt.Errorf("bundle: %s %s: %w", op, d, err)
}

// gone reports whether err means the bucket was deleted since it was
// opened. A direct get from a deleted bucket finds no responders, as one
// from a replicated bucket not ready yet does: the stream tells them
// apart.
func (s *Store) gone(ctx context.Context, err error) bool {
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		return true
	case errors.Is(err, nats.ErrNoResponders):
		_, serr := s.js.Stream(ctx, "OBJ_"+Bucket)
		return errors.Is(serr, jetstream.ErrStreamNotFound)
	}
	return false
}

// Has reports whether the bucket holds the code of d.
func (s *Store) Has(ctx context.Context, d Digest) (bool, error) {
	if err := d.valid(); err != nil {
		return false, err
	}
	_, err := s.obs.GetInfo(ctx, d.Name())
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, s.err(ctx, "look up", d, err)
	}
	return true, nil
}

// Info describes a stored bundle.
type Info struct {
	Digest Digest
	// Size is the archive's size in bytes.
	Size int64
	// Files is its number of entries, as recorded when it was uploaded.
	Files int
	// Function is the function it was first uploaded for.
	Function string
	// Stored is when it was uploaded.
	Stored time.Time
}

// List returns the stored bundles sorted by digest. Objects not named as
// bundles are left out.
func (s *Store) List(ctx context.Context) ([]Info, error) {
	objs, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		if s.gone(ctx, err) {
			return nil, fmt.Errorf("bundle: list: %w", ErrNoBucket)
		}
		return nil, fmt.Errorf("bundle: list: %w", err)
	}
	var infos []Info
	for _, o := range objs {
		hexPart, ok := strings.CutPrefix(o.Name, "sha256-")
		if !ok {
			continue
		}
		d, err := ParseDigest(digestPrefix + hexPart)
		if err != nil {
			continue
		}
		files, _ := strconv.Atoi(o.Metadata[metaFiles])
		infos = append(infos, Info{Digest: d, Size: int64(o.Size), Files: files, Function: o.Metadata[metaFunction], Stored: o.ModTime})
	}
	slices.SortFunc(infos, func(a, b Info) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return infos, nil
}

// Delete removes the code of d from the bucket; ErrNotFound if it holds
// none. Runners that have it in their cache keep it.
func (s *Store) Delete(ctx context.Context, d Digest) error {
	if err := d.valid(); err != nil {
		return err
	}
	if _, err := s.obs.GetInfo(ctx, d.Name()); err != nil {
		return s.err(ctx, "delete", d, err)
	}
	if err := s.obs.Delete(ctx, d.Name()); err != nil {
		return s.err(ctx, "delete", d, err)
	}
	return nil
}
