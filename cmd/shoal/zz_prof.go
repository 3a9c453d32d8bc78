package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"
)

func init() {
	dir := os.Getenv("SHOAL_TEST_PPROF")
	if dir == "" {
		return
	}
	f, _ := os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%d-%s.pprof", os.Getpid(), filepath.Base(os.Args[1]))))
	go func() {
		time.Sleep(4 * time.Second)
		pprof.StartCPUProfile(f)
		time.Sleep(8 * time.Second)
		pprof.StopCPUProfile()
		f.Close()
	}()
}
