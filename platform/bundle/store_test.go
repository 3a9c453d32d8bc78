package bundle_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
)

// Environment of a test binary run as a fetching process.
const (
	fetchURL    = "BUNDLE_TEST_FETCH_URL"
	fetchDigest = "BUNDLE_TEST_FETCH_DIGEST"
	fetchCache  = "BUNDLE_TEST_FETCH_CACHE"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(fetchURL); url != "" {
		os.Exit(fetchProcess(url, bundle.Digest(os.Getenv(fetchDigest)), os.Getenv(fetchCache)))
	}
	os.Exit(m.Run())
}

func TestOpen(t *testing.T) {
	_, js, ctx := start(t)
	if _, err := bundle.Open(ctx, js); !errors.Is(err, bundle.ErrNoBucket) {
		t.Fatalf("Open before Create: %v; want ErrNoBucket", err)
	}
	// Replicas 0 creates a missing bucket with 1, and keeps an existing
	// one as it is.
	for range 2 {
		if _, err := bundle.Create(ctx, js, 0); err != nil {
			t.Fatal(err)
		}
	}
	st, err := objects(t, ctx, js).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Replicas() != 1 || st.Description() != "Shoal: function code by digest" || st.Storage() != jetstream.FileStorage || !st.IsCompressed() {
		t.Errorf("bucket: %d replicas, %q, %v storage, compressed %v", st.Replicas(), st.Description(), st.Storage(), st.IsCompressed())
	}
	if _, err := bundle.Open(ctx, js); err != nil {
		t.Fatal(err)
	}
}

func TestPutFetch(t *testing.T) {
	s, js, ctx := create(t)
	b, src := packTree(t, sample())

	if ok, err := s.Has(ctx, b.Digest); ok || err != nil {
		t.Fatalf("Has before Put: %v, %v", ok, err)
	}
	if uploaded, err := s.Put(ctx, b, "hello"); !uploaded || err != nil {
		t.Fatalf("Put: %v, %v", uploaded, err)
	}
	info, err := objects(t, ctx, js).GetInfo(ctx, b.Digest.Name())
	if err != nil {
		t.Fatal(err)
	}
	if info.Metadata["function"] != "hello" || info.Metadata["digest"] != string(b.Digest) || info.Metadata["files"] != "14" || !strings.Contains(info.Description, "function hello") {
		t.Errorf("object meta: %q %v", info.Description, info.Metadata)
	}
	// The same code for another function is the same object, not
	// uploaded again.
	if uploaded, err := s.Put(ctx, b, "other"); uploaded || err != nil {
		t.Fatalf("second Put: %v, %v; want nothing uploaded", uploaded, err)
	}
	if again, err := objects(t, ctx, js).GetInfo(ctx, b.Digest.Name()); err != nil || again.NUID != info.NUID {
		t.Errorf("second Put replaced the object (%v)", err)
	}
	if ok, err := s.Has(ctx, b.Digest); !ok || err != nil {
		t.Fatalf("Has after Put: %v, %v", ok, err)
	}

	cache := filepath.Join(t.TempDir(), "cache")
	dir, err := s.Fetch(ctx, b.Digest, cache)
	if err != nil {
		t.Fatal(err)
	}
	if dir != filepath.Join(cache, b.Digest.Hex()) {
		t.Errorf("Fetch into %s", dir)
	}
	equalTrees(t, readTree(t, dir), readTree(t, src))
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("root: %v, %v; want 0755", fi.Mode(), err)
	}
	// Once cached, Fetch neither needs nor asks NATS.
	if err := js.DeleteObjectStore(ctx, bundle.Bucket); err != nil {
		t.Fatal(err)
	}
	if again, err := s.Fetch(ctx, b.Digest, cache); again != dir || err != nil {
		t.Errorf("second Fetch: %s, %v", again, err)
	}
}

func TestPutReplacesWrongObject(t *testing.T) {
	s, js, ctx := create(t)
	b, src := packTree(t, sample())
	if _, err := objects(t, ctx, js).PutBytes(ctx, b.Digest.Name(), []byte("not the code")); err != nil {
		t.Fatal(err)
	}
	if uploaded, err := s.Put(ctx, b, "hello"); !uploaded || err != nil {
		t.Fatalf("Put over a wrong object: %v, %v; want it uploaded", uploaded, err)
	}
	dir, err := s.Fetch(ctx, b.Digest, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	equalTrees(t, readTree(t, dir), readTree(t, src))
}

func TestFetchRefuses(t *testing.T) {
	s, js, ctx := create(t)
	obs := objects(t, ctx, js)
	other, _ := packTree(t, map[string]node{"a": file("other", 0o644)})
	otherTar, err := os.ReadFile(archivePath(t, other))
	if err != nil {
		t.Fatal(err)
	}
	d := bundle.Digest("sha256:" + strings.Repeat("ab", 32))

	for _, tc := range []struct {
		name   string
		object []byte // stored under d; nil: none
		opts   []bundle.Option
		is     error
		want   string
	}{
		{"missing", nil, nil, bundle.ErrNotFound, "bundle: fetch " + string(d) + ": code not found in bucket shoal_code"},
		{"arbitrary bytes", []byte("garbage"), nil, bundle.ErrCorrupt, "bundle: code " + string(d) + " is corrupt: got sha256:"},
		{"an archive of other code", otherTar, nil, bundle.ErrCorrupt, "is corrupt: got " + string(other.Digest)},
		{"too large", otherTar, []bundle.Option{bundle.WithLimits(bundle.Limits{MaxSize: 1024})}, bundle.ErrLimit, "more than 1 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.object != nil {
				if _, err := obs.PutBytes(ctx, d.Name(), tc.object); err != nil {
					t.Fatal(err)
				}
				defer obs.Delete(ctx, d.Name())
			}
			s := s
			if tc.opts != nil {
				var err error
				if s, err = bundle.Open(ctx, js, tc.opts...); err != nil {
					t.Fatal(err)
				}
			}
			cache := t.TempDir()
			dir, err := s.Fetch(ctx, d, cache)
			if err == nil {
				t.Fatalf("fetched into %s", dir)
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q;\nwant %v with %q", err, tc.is, tc.want)
			}
			// Nothing but the lock file is left.
			if got := names(t, cache); !slices.Equal(got, []string{".lock-" + d.Hex()}) {
				t.Errorf("cache holds %v", got)
			}
		})
	}

	t.Run("invalid digest", func(t *testing.T) {
		cache := t.TempDir()
		for _, d := range []bundle.Digest{"", "sha256:../../x", bundle.Digest("sha256:" + strings.Repeat("A", 64))} {
			if _, err := s.Fetch(ctx, d, cache); err == nil || !strings.Contains(err.Error(), "want sha256: and 64 lower-case hex digits") {
				t.Errorf("Fetch(%q): %v", d, err)
			}
		}
		if got := names(t, cache); len(got) != 0 {
			t.Errorf("cache holds %v", got)
		}
	})
	t.Run("no bucket", func(t *testing.T) {
		if err := js.DeleteObjectStore(ctx, bundle.Bucket); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Fetch(ctx, d, t.TempDir()); !errors.Is(err, bundle.ErrNoBucket) {
			t.Errorf("Fetch from a deleted bucket: %v; want ErrNoBucket", err)
		}
	})
}

// fetchProcess is a test binary run as a process fetching d into cache;
// it prints the directory.
func fetchProcess(url string, d bundle.Digest, cache string) int {
	nc, err := nats.Connect(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := bundle.Open(ctx, js)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := s.Fetch(ctx, d, cache)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(dir)
	return 0
}

// archivePath is where the archive of b is.
func archivePath(t testing.TB, b *bundle.Bundle) string {
	t.Helper()
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	return r.(*os.File).Name()
}

func TestFetchConcurrently(t *testing.T) {
	s, _, ctx := create(t)
	b, src := packTree(t, sample())
	if _, err := s.Put(ctx, b, "hello"); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	// A fetch that died half-way left its temporary directory behind.
	stale := filepath.Join(cache, ".tmp-"+b.Digest.Hex()+"-123")
	writeTree(t, stale, map[string]node{"index.js": file("half", 0o644)})

	const n = 8
	dirs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { dirs[i], errs[i] = s.Fetch(ctx, b.Digest, cache) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || dirs[i] != filepath.Join(cache, b.Digest.Hex()) {
			t.Errorf("Fetch %d: %s, %v", i, dirs[i], errs[i])
		}
	}
	equalTrees(t, readTree(t, dirs[0]), readTree(t, src))
	want := []string{".lock-" + b.Digest.Hex(), ".tmp-" + b.Digest.Hex() + "-123", b.Digest.Hex()}
	if got := names(t, cache); !slices.Equal(got, want) {
		t.Errorf("cache holds %v, want %v", got, want)
	}
	// Prune clears what the dead fetch left, and keeps what it is told to.
	removed, err := bundle.Prune(cache, []bundle.Digest{b.Digest})
	if err != nil || len(removed) != 0 {
		t.Errorf("Prune: %v, %v", removed, err)
	}
	if got := names(t, cache); !slices.Equal(got, []string{".lock-" + b.Digest.Hex(), b.Digest.Hex()}) {
		t.Errorf("after Prune, cache holds %v", got)
	}
}

// Processes sharing a cache, as `shoal up`'s runners do, each get the
// whole tree.
func TestFetchFromProcesses(t *testing.T) {
	ns, js, ctx := start(t)
	st, err := bundle.Create(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, src := packTree(t, sample())
	if _, err := st.Put(ctx, b, "hello"); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	const n = 4
	cmds := make([]*exec.Cmd, n)
	outs := make([]bytes.Buffer, n)
	for i := range n {
		cmds[i] = exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmds[i].Env = append(os.Environ(), fetchURL+"="+ns.ClientURL(), fetchDigest+"="+string(b.Digest), fetchCache+"="+cache)
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("process %d: %v: %s", i, err, outs[i].String())
		} else if got := strings.TrimSpace(outs[i].String()); got != filepath.Join(cache, b.Digest.Hex()) {
			t.Errorf("process %d: %q", i, got)
		}
	}
	equalTrees(t, readTree(t, filepath.Join(cache, b.Digest.Hex())), readTree(t, src))
	if got := names(t, cache); len(got) != 2 {
		t.Errorf("cache holds %v", got)
	}
}

func TestPrune(t *testing.T) {
	s, _, ctx := create(t)
	cache := t.TempDir()
	var ds []bundle.Digest
	for i := range 3 {
		b, _ := packTree(t, map[string]node{"f": file(fmt.Sprint(i), 0o644)})
		if _, err := s.Put(ctx, b, "f"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Fetch(ctx, b.Digest, cache); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, b.Digest)
	}
	writeTree(t, cache, map[string]node{"unrelated": file("kept", 0o644), ".trash-x/f": file("", 0o644)})
	removed, err := bundle.Prune(cache, ds[1:2])
	if err != nil {
		t.Fatal(err)
	}
	want := []bundle.Digest{ds[0], ds[2]}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	if got := names(t, cache); !slices.Equal(got, []string{".lock-" + ds[1].Hex(), ds[1].Hex(), "unrelated"}) {
		t.Errorf("cache holds %v", got)
	}
	if removed, err := bundle.Prune(filepath.Join(cache, "missing"), nil); removed != nil || err != nil {
		t.Errorf("Prune of a missing cache: %v, %v", removed, err)
	}
}

func TestListDelete(t *testing.T) {
	s, js, ctx := create(t)
	if infos, err := s.List(ctx); len(infos) != 0 || err != nil {
		t.Fatalf("List of an empty bucket: %v, %v", infos, err)
	}
	var want []bundle.Info
	for _, fn := range []string{"a", "b"} {
		b, _ := packTree(t, map[string]node{"f": file(fn, 0o644)})
		if _, err := s.Put(ctx, b, fn); err != nil {
			t.Fatal(err)
		}
		want = append(want, bundle.Info{Digest: b.Digest, Size: b.Size, Files: 1, Function: fn})
	}
	// Objects not named as bundles are not listed.
	if _, err := objects(t, ctx, js).PutString(ctx, "notes", "x"); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(want, func(a, b bundle.Info) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	infos, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range infos {
		if infos[i].Stored.IsZero() {
			t.Errorf("%s: no time stored", infos[i].Digest)
		}
		infos[i].Stored = want[i].Stored
	}
	if !slices.Equal(infos, want) {
		t.Errorf("List: %+v\nwant %+v", infos, want)
	}

	if err := s.Delete(ctx, want[0].Digest); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Has(ctx, want[0].Digest); ok || err != nil {
		t.Errorf("Has after Delete: %v, %v", ok, err)
	}
	if err := s.Delete(ctx, want[0].Digest); !errors.Is(err, bundle.ErrNotFound) {
		t.Errorf("second Delete: %v; want ErrNotFound", err)
	}
	if infos, err := s.List(ctx); err != nil || len(infos) != 1 || infos[0].Digest != want[1].Digest {
		t.Errorf("List after Delete: %+v, %v", infos, err)
	}
}

// Two deploys of the same code at once both succeed, and leave it whole.
func TestPutConcurrently(t *testing.T) {
	s, _, ctx := create(t)
	b, src := packTree(t, sample())
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.Put(ctx, b, "hello") })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	dir, err := s.Fetch(ctx, b.Digest, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	equalTrees(t, readTree(t, dir), readTree(t, src))
}

// On a cluster, the bucket has three replicas and code put through one
// node is fetched through another.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	nodes := brokertest.StartCluster(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jsOn := func(n *broker.Server) jetstream.JetStream {
		js, err := jetstream.New(brokertest.Connect(t, n))
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	// A cluster just formed may still move its meta leader, and a request
	// sent meanwhile goes unanswered: short attempts, retried.
	var s *bundle.Store
	err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error {
		var err error
		s, err = bundle.Create(ctx, jsOn(nodes[0]), 3)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b, src := packTree(t, sample())
	if _, err := s.Put(ctx, b, "hello"); err != nil {
		t.Fatal(err)
	}
	other, err := bundle.Open(ctx, jsOn(nodes[2]))
	if err != nil {
		t.Fatal(err)
	}
	st, err := objects(t, ctx, jsOn(nodes[2])).Status(ctx)
	if err != nil || st.Replicas() != 3 {
		t.Fatalf("bucket status: %v, %v; want 3 replicas", st, err)
	}
	dir, err := other.Fetch(ctx, b.Digest, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	equalTrees(t, readTree(t, dir), readTree(t, src))
}

// An object whose chunks are gone (a purge of the stream) is uploaded
// again.
func TestPutReplacesLostChunks(t *testing.T) {
	s, js, ctx := create(t)
	b, src := packTree(t, sample())
	if _, err := s.Put(ctx, b, "hello"); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "OBJ_"+bundle.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject("$O."+bundle.Bucket+".C.>")); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	if _, err := s.Fetch(ctx, b.Digest, cache); !errors.Is(err, bundle.ErrCorrupt) {
		t.Errorf("Fetch without chunks: %v; want ErrCorrupt", err)
	}
	if uploaded, err := s.Put(ctx, b, "hello"); !uploaded || err != nil {
		t.Fatalf("Put: %v, %v; want it uploaded", uploaded, err)
	}
	dir, err := s.Fetch(ctx, b.Digest, cache)
	if err != nil {
		t.Fatal(err)
	}
	equalTrees(t, readTree(t, dir), readTree(t, src))
}

// An empty source is a bundle too, of an empty tree.
func TestEmptyTree(t *testing.T) {
	s, _, ctx := create(t)
	b, _ := packTree(t, nil)
	if b.Files != 0 || b.Size != 1024 {
		t.Errorf("empty bundle: %d files, %d bytes; want 0 and the archive's end (1024)", b.Files, b.Size)
	}
	if _, err := s.Put(ctx, b, "empty"); err != nil {
		t.Fatal(err)
	}
	dir, err := s.Fetch(ctx, b.Digest, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got := names(t, dir); len(got) != 0 {
		t.Errorf("empty tree holds %v", got)
	}
}
