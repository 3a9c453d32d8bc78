package bundle_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/platform/bundle"
)

// archive builds a tar archive of hdrs; a regular file's content is
// Size bytes of 'x' unless body gives it.
func archive(t testing.TB, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			if _, err := tw.Write(bytes.Repeat([]byte("x"), int(h.Size))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size}
}
func dirH(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}
}
func symH(name, target string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target}
}

func TestUnpackRefuses(t *testing.T) {
	big := bundle.Limits{MaxSize: 8 << 10, MaxFiles: 3}
	for _, tc := range []struct {
		name string
		tar  []byte
		lim  bundle.Limits
		is   error
		want string
	}{
		{"parent path", archive(t, reg("../evil", 1)), bundle.Limits{}, bundle.ErrUnsafe, `"../evil": unsafe archive entry: path with ..`},
		{"dot-dot inside", archive(t, dirH("a/"), reg("a/../../evil", 1)), bundle.Limits{}, bundle.ErrUnsafe, `"a/../../evil": unsafe archive entry: path with ..`},
		{"absolute path", archive(t, reg("/tmp/evil", 1)), bundle.Limits{}, bundle.ErrUnsafe, `"/tmp/evil": unsafe archive entry: absolute path`},
		{"unclean path", archive(t, reg("./a", 1)), bundle.Limits{}, bundle.ErrUnsafe, `"./a": unsafe archive entry: not a clean relative path`},
		{"empty element", archive(t, dirH("a/"), reg("a//b", 1)), bundle.Limits{}, bundle.ErrUnsafe, "not a clean relative path"},
		{"link out, then a file through it", archive(t, symH("l", ".."), reg("l/evil", 1)), bundle.Limits{}, bundle.ErrUnsafe, `"l": unsafe archive entry: symbolic link to .., outside the tree`},
		{"link in, then a file through it", archive(t, symH("l", "."), reg("l/evil", 1)), bundle.Limits{}, bundle.ErrUnsafe, `"l/evil": unsafe archive entry: its path goes through the symbolic link "l"`},
		{"link in, then a directory through it", archive(t, dirH("d/"), symH("d/l", ".."), dirH("d/l/x/")), bundle.Limits{}, bundle.ErrUnsafe, `goes through the symbolic link "d/l"`},
		{"absolute link", archive(t, symH("l", "/etc")), bundle.Limits{}, bundle.ErrUnsafe, "symbolic link to the absolute path /etc"},
		{"link with a detour", archive(t, dirH("d/"), symH("d/s", "."), symH("l", "d/s/../..")), bundle.Limits{}, bundle.ErrUnsafe, "has .. after a name"},
		{"link not clean", archive(t, symH("l", "./x")), bundle.Limits{}, bundle.ErrUnsafe, "not a clean path"},
		{"link with an empty target", archive(t, symH("l", "")), bundle.Limits{}, bundle.ErrUnsafe, "empty target"},
		{"duplicate file", archive(t, reg("f", 1), reg("f", 2)), bundle.Limits{}, bundle.ErrUnsafe, `"f": unsafe archive entry: appears twice`},
		{"file over a link", archive(t, symH("f", "g"), reg("f", 1)), bundle.Limits{}, bundle.ErrUnsafe, "appears twice"},
		{"directory not listed", archive(t, reg("d/f", 1)), bundle.Limits{}, bundle.ErrUnsafe, `its directory "d" is not an earlier entry`},
		{"hard link", archive(t, reg("f", 1), &tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "f"}), bundle.Limits{}, bundle.ErrUnsafe, `"h": unsafe archive entry: is a hard link`},
		{"character device", archive(t, &tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}), bundle.Limits{}, bundle.ErrUnsafe, "is a device"},
		{"block device", archive(t, &tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}), bundle.Limits{}, bundle.ErrUnsafe, "is a device"},
		{"fifo", archive(t, &tar.Header{Typeflag: tar.TypeFifo, Name: "p"}), bundle.Limits{}, bundle.ErrUnsafe, "is a named pipe"},
		{"too many files", archive(t, reg("a", 0), reg("b", 0), reg("c", 0), reg("d", 0)), big, bundle.ErrLimit, "more than 3 files"},
		{"file too large", archive(t, reg("a", 16<<10)), big, bundle.ErrLimit, "the archive is larger than 8 KiB"},
		{"archive too large", archive(t, reg("a", 3<<10), reg("b", 3<<10), reg("c", 3<<10)), big, bundle.ErrLimit, "the archive is larger than 8 KiB"},
		{"truncated", archive(t, reg("a", 4<<10))[:2048], bundle.Limits{}, nil, "not a valid archive"},
		{"not an archive", bytes.Repeat([]byte("garbage!"), 100), bundle.Limits{}, nil, "not a valid archive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := bundle.Unpack(bytes.NewReader(tc.tar), dst, tc.lim)
			if err == nil {
				t.Fatal("unpacked")
			}
			if !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q;\nwant one with %q (%v)", err, tc.want, tc.is)
			}
			if got := names(t, parent); len(got) != 1 {
				t.Errorf("wrote %v beside the destination", got)
			}
		})
	}
}

func TestUnpack(t *testing.T) {
	b, src := packTree(t, sample())
	dst := t.TempDir()
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	files, err := bundle.Unpack(r, dst, bundle.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if files != b.Files {
		t.Errorf("unpacked %d entries, packed %d", files, b.Files)
	}
	equalTrees(t, readTree(t, dst), readTree(t, src))

	t.Run("modes", func(t *testing.T) {
		// Modes are those of the archive's kind of entry, whatever the
		// archive says beyond the x bits.
		dst := t.TempDir()
		tarball := archive(t, &tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o700},
			&tar.Header{Typeflag: tar.TypeReg, Name: "d/x", Mode: 0o4710, Size: 1},
			&tar.Header{Typeflag: tar.TypeReg, Name: "d/r", Mode: 0o666, Size: 1},
			&tar.Header{Typeflag: tar.TypeReg, Name: "w", Mode: 0o600, Size: 1})
		if _, err := bundle.Unpack(bytes.NewReader(tarball), dst, bundle.Limits{}); err != nil {
			t.Fatal(err)
		}
		equalTrees(t, readTree(t, dst), map[string]node{"d": dir(), "d/x": file("x", 0o755), "d/r": file("x", 0o644), "w": file("x", 0o644)})
	})
	t.Run("does not overwrite", func(t *testing.T) {
		dst := t.TempDir()
		writeTree(t, dst, map[string]node{"f": link("/etc/passwd")})
		_, err := bundle.Unpack(bytes.NewReader(archive(t, reg("f", 1))), dst, bundle.Limits{})
		if err == nil || !strings.Contains(err.Error(), "exists") {
			t.Errorf("error %v; want one saying f exists", err)
		}
	})
}

// equalTrees reports the differences between two trees.
func equalTrees(t testing.TB, got, want map[string]node) {
	t.Helper()
	for name, w := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s: missing", name)
		} else if g != w {
			t.Errorf("%s: %+v, want %+v", name, g, w)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: not expected", name)
		}
	}
}
