package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// cpuProfile is the CPU profile --cpu-profile is writing; nil when none.
var cpuProfile *os.File

// startCPUProfile starts writing this process's CPU profile to path
// (go tool pprof reads it), until stopCPUProfile.
func startCPUProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("--cpu-profile: %w", err)
	}
	cpuProfile = f
	return nil
}

// stopCPUProfile ends the profile startCPUProfile began, if any, and
// reports a profile it could not complete.
func stopCPUProfile() {
	if cpuProfile == nil {
		return
	}
	pprof.StopCPUProfile()
	if err := cpuProfile.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "shoal: --cpu-profile: "+err.Error())
	}
	cpuProfile = nil
}

// writeAllocProfile writes, if --mem-profile asked for it, the profile of
// every allocation this process made (go tool pprof -sample_index
// alloc_space or alloc_objects), and reports a failure.
func writeAllocProfile(path string) {
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shoal: --mem-profile: "+err.Error())
	}
}

// workerProfile is the --cpu-profile or --mem-profile of up's worker in
// slot: up's own path with the slot appended, so that each worker writes
// its own (a re-forked worker overwrites its predecessor's).
func workerProfile(path string, slot int) string {
	return fmt.Sprintf("%s.worker-%d", path, slot)
}
