package bundle_test

import (
	"archive/tar"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/bundle"
)

func TestPackIsDeterministic(t *testing.T) {
	b1, src := packTree(t, sample())
	if _, err := bundle.ParseDigest(string(b1.Digest)); err != nil {
		t.Fatal(err)
	}
	if b1.Files != 14 {
		t.Errorf("Files = %d, want 14 (9 entries and 5 directories they imply)", b1.Files)
	}

	// The same tree, written in another order at another time, with other
	// mtimes and other non-x mode bits, and a .git, is the same bundle.
	again := t.TempDir()
	writeTree(t, again, map[string]node{".git/HEAD": file("ref: x", 0o644), "lib/.git": file("gitdir: y", 0o644)})
	time.Sleep(10 * time.Millisecond)
	writeTree(t, again, sample())
	past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, name := range []string{"index.js", "lib/a.js", "lib", "empty"} {
		if err := os.Chtimes(filepath.Join(again, name), past, past); err != nil {
			t.Fatal(err)
		}
	}
	for name, mode := range map[string]os.FileMode{"index.js": 0o600, "run.sh": 0o700, "lib/a.js": 0o664, "empty": 0o700} {
		if err := os.Chmod(filepath.Join(again, name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if b2 := pack(t, again); b2.Digest != b1.Digest || b2.Size != b1.Size || b2.Files != b1.Files {
		t.Errorf("same tree packed as %s (%d bytes, %d files), first as %s (%d bytes, %d files)", b2.Digest, b2.Size, b2.Files, b1.Digest, b1.Size, b1.Files)
	}
	if b3 := pack(t, src); b3.Digest != b1.Digest {
		t.Errorf("packing twice gave %s then %s", b1.Digest, b3.Digest)
	}

	for _, tc := range []struct {
		name   string
		change func(map[string]node)
	}{
		{"one byte changed", func(tr map[string]node) { tr["lib/deep/b.txt"] = file("c", 0o644) }},
		{"file made executable", func(tr map[string]node) { tr["index.js"] = file(tr["index.js"].data, 0o744) }},
		{"file renamed", func(tr map[string]node) { tr["lib/deep/c.txt"] = tr["lib/deep/b.txt"]; delete(tr, "lib/deep/b.txt") }},
		{"empty directory added", func(tr map[string]node) { tr["empty/more"] = dir() }},
		{"link retargeted", func(tr map[string]node) { tr["dangling"] = link("not/here") }},
		{"empty file added", func(tr map[string]node) { tr["z"] = file("", 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tree := maps.Clone(sample())
			tc.change(tree)
			if b, _ := packTree(t, tree); b.Digest == b1.Digest {
				t.Errorf("changed tree has the same digest %s", b.Digest)
			}
		})
	}
}

// TestPackArchive pins down the archive's format.
func TestPackArchive(t *testing.T) {
	b, _ := packTree(t, sample())
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tr := tar.NewReader(r)
	var got []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, hdr.Name)
		if !hdr.ModTime.Equal(time.Unix(0, 0)) || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: mtime %v, owner %d:%d %q:%q; want the epoch and 0:0 unnamed", hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
		want := map[byte]int64{tar.TypeDir: 0o755, tar.TypeSymlink: 0o777}[hdr.Typeflag]
		if hdr.Typeflag == tar.TypeReg {
			want = 0o644
			if strings.HasSuffix(hdr.Name, ".sh") || strings.HasSuffix(hdr.Name, "bin.js") {
				want = 0o755
			}
		}
		if hdr.Mode != want {
			t.Errorf("%s: mode %o, want %o", hdr.Name, hdr.Mode, want)
		}
	}
	want := []string{"dangling", "empty/", "index.js", "lib/", "lib/a.js", "lib/deep/", "lib/deep/b.txt", "lib/deep/up",
		"node_modules/", "node_modules/.bin/", "node_modules/.bin/x", "node_modules/x/", "node_modules/x/bin.js", "run.sh"}
	// node_modules/x sorts after node_modules/.bin/x: '.' < 'x'.
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("entries:\n%s\nwant\n%s", strings.Join(got, " "), strings.Join(want, " "))
	}
	if int64(len(want)) != int64(b.Files) {
		t.Errorf("Files = %d, archive holds %d", b.Files, len(want))
	}
}

func TestPackRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		tree map[string]node
		opts bundle.PackOptions
		want string // in the error, after the path
		is   error
	}{
		{"absolute link", map[string]node{"a": link("/etc/passwd")}, bundle.PackOptions{}, "a: symbolic link to the absolute path /etc/passwd", nil},
		{"link out of the tree", map[string]node{"d/a": link("../../x")}, bundle.PackOptions{}, "d/a: symbolic link to ../../x, outside the tree", nil},
		{"link through a detour", map[string]node{"d/s": link("."), "l": link("d/s/../..")}, bundle.PackOptions{}, "l: symbolic link to d/s/../.., which has .. after a name", nil},
		{"too many files", map[string]node{"a": file("", 0o644), "b": file("", 0o644), "c/d": file("", 0o644)}, bundle.PackOptions{Limits: bundle.Limits{MaxFiles: 3}}, "more than 3 files", bundle.ErrLimit},
		{"files too large", map[string]node{"a": file(strings.Repeat("x", 2048), 0o644)}, bundle.PackOptions{Limits: bundle.Limits{MaxSize: 1024}}, "the files hold more than 1 KiB", bundle.ErrLimit},
		{"archive too large", map[string]node{"a": file("", 0o644), "b": file("", 0o644)}, bundle.PackOptions{Limits: bundle.Limits{MaxSize: 1024}}, "the archive is larger than 1 KiB", bundle.ErrLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			writeTree(t, src, tc.tree)
			tc.opts.TempDir = t.TempDir()
			b, err := bundle.Pack(src, tc.opts)
			if err == nil {
				b.Close()
				t.Fatal("packed")
			}
			if !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q; want one with %q (%v)", err, tc.want, tc.is)
			}
			if left := names(t, tc.opts.TempDir); len(left) != 0 {
				t.Errorf("left %v in the temporary directory", left)
			}
		})
	}

	t.Run("socket", func(t *testing.T) {
		src, err := os.MkdirTemp("", "sock") // a short path: socket paths are bounded
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(src)
		l, err := net.Listen("unix", filepath.Join(src, "s"))
		if err != nil {
			t.Skipf("no unix sockets: %v", err)
		}
		defer l.Close()
		_, err = bundle.Pack(src, bundle.PackOptions{})
		if err == nil || !strings.Contains(err.Error(), "s: is a socket; only regular files") {
			t.Errorf("error %v; want one naming the socket", err)
		}
	})
	t.Run("not a directory", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "f")
		writeTree(t, filepath.Dir(p), map[string]node{"f": file("x", 0o644)})
		if _, err := bundle.Pack(p, bundle.PackOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("error %v", err)
		}
	})
}

// A source that is itself a link is packed as the directory it points
// to; links below it are packed as links.
func TestPackFollowsTheRootLink(t *testing.T) {
	b1, src := packTree(t, sample())
	ln := filepath.Join(t.TempDir(), "src")
	if err := os.Symlink(src, ln); err != nil {
		t.Fatal(err)
	}
	if b2 := pack(t, ln); b2.Digest != b1.Digest {
		t.Errorf("through a link: %s, directly: %s", b2.Digest, b1.Digest)
	}
}

func TestParseDigest(t *testing.T) {
	good := "sha256:" + strings.Repeat("0a", 32)
	if d, err := bundle.ParseDigest(good); err != nil || d.Hex() != strings.Repeat("0a", 32) || d.Name() != "sha256-"+d.Hex() || d.String() != good {
		t.Errorf("ParseDigest(%q) = %q, %v", good, d, err)
	}
	for _, s := range []string{"", "sha256:", "sha512:" + strings.Repeat("0a", 32), "sha256:" + strings.Repeat("0A", 32),
		"sha256:" + strings.Repeat("0g", 32), "sha256:" + strings.Repeat("0a", 31), "sha256:../../../../etc/passwd" + strings.Repeat("a", 36)} {
		if _, err := bundle.ParseDigest(s); err == nil {
			t.Errorf("ParseDigest(%q) accepted", s)
		}
	}
}
