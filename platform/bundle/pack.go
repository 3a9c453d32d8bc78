package bundle

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// PackOptions adjust Pack.
type PackOptions struct {
	Limits
	// TempDir is where the archive is written until the Bundle is
	// closed; "" means the system's temporary directory.
	TempDir string
}

// Bundle is a packed tree: its archive, kept in a temporary file until
// Close.
type Bundle struct {
	// Digest identifies the archive.
	Digest Digest
	// Size is the archive's size in bytes.
	Size int64
	// Files is the number of entries: files, directories and symbolic
	// links.
	Files int

	path string
}

// Open opens the archive for reading.
func (b *Bundle) Open() (io.ReadCloser, error) {
	f, err := os.Open(b.path)
	if err != nil {
		return nil, fmt.Errorf("bundle: open archive of %s: %w", b.Digest, err)
	}
	return f, nil
}

// Close removes the archive.
func (b *Bundle) Close() error {
	if err := os.Remove(b.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("bundle: remove archive of %s: %w", b.Digest, err)
	}
	return nil
}

// epoch is every entry's modification time.
var epoch = time.Unix(0, 0).UTC()

// entry is one file, directory or symbolic link of a tree being packed.
type entry struct {
	name string // slash-separated, relative to the root
	src  string // path on disk
	kind fs.FileMode
	exec bool
	size int64
	link string // canonical target of a symbolic link
}

// Pack writes the tree at dir into a deterministic archive (see the
// package documentation) and returns it; the caller closes it. Errors
// name the path at fault; a tree beyond the limits is an ErrLimit.
func Pack(dir string, opts PackOptions) (*Bundle, error) {
	lim := opts.Limits.orDefault()
	// The root may be a link (WalkDir would not enter it); nothing below
	// it is followed.
	root, err := filepath.EvalSymlinks(dir)
	if err == nil {
		root, err = filepath.Abs(root)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle: pack %w", err)
	}
	if fi, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("bundle: pack %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("bundle: pack %s: not a directory", dir)
	}
	entries, err := walk(root, lim)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(opts.TempDir, "shoal-bundle-*.tar")
	if err != nil {
		return nil, fmt.Errorf("bundle: pack %s: %w", dir, err)
	}
	b := &Bundle{Files: len(entries), path: f.Name()}
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, h), max: lim.MaxSize}
	err = write(cw, entries)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if cw.over {
		err = fmt.Errorf("bundle: pack %s: %w: the archive is larger than %s", dir, ErrLimit, byteSize(lim.MaxSize))
	}
	if err != nil {
		os.Remove(b.path)
		return nil, err
	}
	b.Digest, b.Size = digestOf(h.Sum(nil)), cw.n
	return b, nil
}

// walk lists the tree at root sorted by path, checking every entry.
func walk(root string, lim Limits) ([]entry, error) {
	var entries []entry
	var content int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("bundle: pack %w", err)
		}
		if p == root {
			return nil
		}
		if d.Name() == ".git" {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if len(entries) == lim.MaxFiles {
			return fmt.Errorf("bundle: pack %s: %w: more than %d files, directories and links", root, ErrLimit, lim.MaxFiles)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return fmt.Errorf("bundle: pack %s: %w", p, err)
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("bundle: pack %w", err)
		}
		e := entry{name: filepath.ToSlash(rel), src: p, kind: info.Mode().Type()}
		switch e.kind {
		case 0:
			e.exec, e.size = info.Mode().Perm()&0o111 != 0, info.Size()
			content += e.size
			if content > lim.MaxSize {
				return fmt.Errorf("bundle: pack %s: %w: the files hold more than %s", root, ErrLimit, byteSize(lim.MaxSize))
			}
		case fs.ModeDir:
		case fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("bundle: pack %w", err)
			}
			if filepath.IsAbs(target) {
				return fmt.Errorf("bundle: pack %s: symbolic link to the absolute path %s; only relative links that stay inside the source can be packed", p, target)
			}
			if e.link, err = checkLink(e.name, filepath.ToSlash(target)); err != nil {
				return fmt.Errorf("bundle: pack %s: %w", p, err)
			}
		default:
			return fmt.Errorf("bundle: pack %s: is a %s; only regular files, directories and symbolic links inside the source can be packed", p, kindName(e.kind))
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A parent sorts before its children: a path is a prefix of theirs.
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return entries, nil
}

// write writes the archive of entries to w.
func write(w io.Writer, entries []entry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, ModTime: epoch, Format: tar.FormatPAX}
		switch e.kind {
		case fs.ModeDir:
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, e.name+"/", 0o755
		case fs.ModeSymlink:
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, e.link, 0o777
		default:
			hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, e.size, int64(fileMode(e.exec))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("bundle: pack %s: %w", e.src, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if err := copyFile(tw, e); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("bundle: pack: %w", err)
	}
	return nil
}

// copyFile copies the contents of a regular file, which must still have
// the size it had when listed.
func copyFile(w io.Writer, e entry) error {
	f, err := os.Open(e.src)
	if err != nil {
		return fmt.Errorf("bundle: pack %w", err)
	}
	defer f.Close()
	n, err := io.CopyN(w, f, e.size)
	if errors.Is(err, io.EOF) || err == nil && n == e.size && !atEOF(f) {
		return fmt.Errorf("bundle: pack %s: the file changed while it was being packed; pack again", e.src)
	}
	if err != nil {
		return fmt.Errorf("bundle: pack %s: %w", e.src, err)
	}
	return nil
}

// atEOF reports whether nothing more can be read from f.
func atEOF(f *os.File) bool {
	var b [1]byte
	n, _ := f.Read(b[:])
	return n == 0
}

// fileMode is the mode of a regular file in a bundle.
func fileMode(exec bool) fs.FileMode {
	if exec {
		return 0o755
	}
	return 0o644
}

// checkLink checks that a symbolic link at name (slash-separated,
// relative to the root) with target, slash-separated and relative,
// resolves inside the tree whatever the other links in it point to, and
// returns the target cleaned. It does if its ".." elements all come first
// and are no more than the directories above the link: climbing from the
// link's directory, made of real directories, then stays in the tree, and
// descending through names, each a directory or a link that itself stays
// in the tree, does too. A ".." after a name is refused: where it leads
// depends on whether that name is a link.
func checkLink(name, target string) (string, error) {
	if target == "" {
		return "", errors.New("symbolic link with an empty target")
	}
	if path.IsAbs(target) {
		return "", fmt.Errorf("symbolic link to the absolute path %s; only relative links that stay inside the tree are allowed", target)
	}
	up, named := 0, false
	for el := range strings.SplitSeq(target, "/") {
		switch el {
		case "", ".":
		case "..":
			if named {
				return "", fmt.Errorf("symbolic link to %s, which has .. after a name; write it as a path without that detour", target)
			}
			up++
		default:
			named = true
		}
	}
	if up > strings.Count(name, "/") {
		return "", fmt.Errorf("symbolic link to %s, outside the tree; only links that stay inside it are allowed", target)
	}
	return path.Clean(target), nil
}

// kindName names a file type that cannot be packed.
func kindName(t fs.FileMode) string {
	switch {
	case t&fs.ModeDevice != 0:
		return "device"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe (fifo)"
	case t&fs.ModeSocket != 0:
		return "socket"
	default:
		return "special file (" + t.String() + ")"
	}
}

// countingWriter counts what is written through it and fails once the
// count would pass max.
type countingWriter struct {
	w    io.Writer
	n    int64
	max  int64
	over bool
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.n+int64(len(p)) > c.max {
		c.over = true
		return 0, ErrLimit
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// byteSize formats a size for a message.
func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}
