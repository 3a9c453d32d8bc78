package main

import (
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCPUProfile: shoal up --cpu-profile and --mem-profile write its own
// CPU and allocation profiles and each worker's, complete once they have
// exited.
func TestCPUProfile(t *testing.T) {
	dir := t.TempDir()
	prof, allocs := filepath.Join(dir, "up.pprof"), filepath.Join(dir, "up.allocs")
	c := startCluster(t, 2, "--cpu-profile", prof, "--mem-profile", allocs)
	for range 50 {
		if code, body := get(t, c.gw+"/function/ping"); code != 200 || body != "pong!" {
			t.Fatalf("ping = %d %s", code, body)
		}
	}
	if err := c.p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("up did not stop cleanly: %v\n%s", err, c.p.output())
	}
	for _, path := range []string{prof, workerProfile(prof, 1), workerProfile(prof, 2), allocs, workerProfile(allocs, 1), workerProfile(allocs, 2)} {
		f, err := os.Open(path)
		if err != nil {
			t.Errorf("profile: %v", err)
			continue
		}
		// A complete profile is gzip-compressed protobuf: the stream must
		// end properly, and hold something.
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			f.Close()
			continue
		}
		n, err := io.Copy(io.Discard, zr)
		if err != nil || n == 0 {
			t.Errorf("%s: %d bytes, %v: an incomplete profile", path, n, err)
		}
		f.Close()
	}
}
