package bundle

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
)

// Unpack writes the tree of an archive into dst, an existing and empty
// directory, and returns its number of entries. The archive may come from
// anyone: Unpack refuses, with an ErrUnsafe naming the entry, absolute
// paths, paths with "..", unclean paths, duplicate entries, entries whose
// directory is not an earlier entry (such as a path through a symbolic
// link), hard links, devices, fifos and any other type than regular file,
// directory and symbolic link, and links whose target is absolute or
// could lead out of the tree. An archive larger than lim.MaxSize, or with
// more entries than lim.MaxFiles, is an ErrLimit. Files are created
// 0644, or 0755 if any x bit is set; directories 0755. Unpack never
// follows a symbolic link when it writes, and never overwrites. On error,
// what was written stays in dst: unpack into a directory of your own and
// remove it.
func Unpack(r io.Reader, dst string, lim Limits) (files int, err error) {
	lim = lim.orDefault()
	root, err := os.OpenRoot(dst)
	if err != nil {
		return 0, fmt.Errorf("bundle: unpack: %w", err)
	}
	defer root.Close()
	lr := &limitedReader{r: r, left: lim.MaxSize}
	tr := tar.NewReader(lr)
	u := unpacker{root: root, tr: tr, lr: lr, lim: lim, dirs: map[string]bool{}, links: map[string]bool{}, seen: map[string]bool{}}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return files, u.readErr(err)
		}
		files++
		if files > lim.MaxFiles {
			return files, fmt.Errorf("bundle: unpack: %w: more than %d files, directories and links", ErrLimit, lim.MaxFiles)
		}
		if err := u.entry(hdr); err != nil {
			return files, err
		}
	}
}

// unpacker is the state of one Unpack.
type unpacker struct {
	root  *os.Root
	tr    *tar.Reader
	lr    *limitedReader
	lim   Limits
	dirs  map[string]bool // directories written
	links map[string]bool // symbolic links written
	seen  map[string]bool // every entry written
}

// readErr explains an error reading the archive.
func (u *unpacker) readErr(err error) error {
	if u.lr.over {
		return fmt.Errorf("bundle: unpack: %w: the archive is larger than %s", ErrLimit, byteSize(u.lim.MaxSize))
	}
	return fmt.Errorf("bundle: unpack: not a valid archive: %w", err)
}

// unsafe is the error for an entry refused.
func unsafe(name, format string, args ...any) error {
	return fmt.Errorf("bundle: unpack %q: %w: %s", name, ErrUnsafe, fmt.Sprintf(format, args...))
}

// entry writes one entry.
func (u *unpacker) entry(hdr *tar.Header) error {
	name, err := entryName(hdr)
	if err != nil {
		return err
	}
	if u.seen[name] {
		return unsafe(hdr.Name, "appears twice in the archive")
	}
	u.seen[name] = true
	if dir := path.Dir(name); dir != "." && !u.dirs[dir] {
		for p := dir; p != "."; p = path.Dir(p) {
			if u.links[p] {
				return unsafe(hdr.Name, "its path goes through the symbolic link %q", p)
			}
		}
		return unsafe(hdr.Name, "its directory %q is not an earlier entry of the archive", dir)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := u.root.Mkdir(name, 0o755); err != nil {
			return fmt.Errorf("bundle: unpack: %w", err)
		}
		// Mkdir's mode is filtered by the umask; the tree's is not.
		if err := u.root.Chmod(name, 0o755); err != nil {
			return fmt.Errorf("bundle: unpack: %w", err)
		}
		u.dirs[name] = true
	case tar.TypeReg:
		if hdr.Size > u.lr.left {
			return fmt.Errorf("bundle: unpack %q: %w: the archive is larger than %s", hdr.Name, ErrLimit, byteSize(u.lim.MaxSize))
		}
		return u.file(name, hdr)
	case tar.TypeSymlink:
		target, err := checkLink(name, hdr.Linkname)
		if err != nil {
			return unsafe(hdr.Name, "%v", err)
		}
		if target != hdr.Linkname {
			return unsafe(hdr.Name, "symbolic link to %s, which is not a clean path (%s)", hdr.Linkname, target)
		}
		if err := u.root.Symlink(target, name); err != nil {
			return fmt.Errorf("bundle: unpack: %w", err)
		}
		u.links[name] = true
	case tar.TypeLink:
		return unsafe(hdr.Name, "is a hard link (to %q); bundles hold none", hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return unsafe(hdr.Name, "is a device")
	case tar.TypeFifo:
		return unsafe(hdr.Name, "is a named pipe (fifo)")
	default:
		return unsafe(hdr.Name, "has entry type %q; bundles hold only regular files, directories and symbolic links", hdr.Typeflag)
	}
	return nil
}

// file writes a regular file. O_EXCL makes the open fail on anything
// already there, a symbolic link included, rather than follow it.
func (u *unpacker) file(name string, hdr *tar.Header) error {
	mode := fileMode(hdr.Mode&0o111 != 0)
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("bundle: unpack: %w", err)
	}
	_, err = io.Copy(f, u.tr)
	if err == nil {
		err = f.Chmod(mode) // the umask filtered the mode
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if u.lr.over || errors.Is(err, io.ErrUnexpectedEOF) {
			return u.readErr(err)
		}
		return fmt.Errorf("bundle: unpack %q: %w", hdr.Name, err)
	}
	return nil
}

// entryName checks an entry's name and returns it without the trailing
// slash of a directory.
func entryName(hdr *tar.Header) (string, error) {
	name := hdr.Name
	if hdr.Typeflag == tar.TypeDir {
		name = strings.TrimSuffix(name, "/")
	}
	switch {
	case name == "":
		return "", unsafe(hdr.Name, "empty path")
	case strings.HasPrefix(name, "/"):
		return "", unsafe(hdr.Name, "absolute path")
	case slices.Contains(strings.Split(name, "/"), ".."):
		return "", unsafe(hdr.Name, "path with ..")
	case !fs.ValidPath(name) || name == ".":
		return "", unsafe(hdr.Name, "not a clean relative path")
	}
	return name, nil
}

// limitedReader reads at most left bytes from r, and records an attempt
// to read past them.
type limitedReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var b [1]byte
		n, err := l.r.Read(b[:])
		if n > 0 {
			l.over = true
			return 0, ErrLimit
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}
