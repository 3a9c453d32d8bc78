//go:build linux

package supervisor_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/supervisor"
)

// The tests supervise real processes: the test binary re-executes itself
// as a worker that behaves as this variable says (see child).
const (
	childEnv    = "SUPERVISOR_TEST_CHILD"
	crashDirEnv = "SUPERVISOR_TEST_CRASH_DIR" // crash-on-file: exit 3 once DIR/PID exists
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child is a worker process; it returns its exit code.
func child(mode string) int {
	pid := os.Getpid()
	// Every mode catches SIGTERM: one that does not wait for it ignores it.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ready := func(detail string) {
		fmt.Printf("hello from %d\n", pid)
		fmt.Fprintf(os.Stderr, "warming up %d\n", pid)
		if err := supervisor.NotifyReady(detail); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	id := fmt.Sprintf("id-%d", pid)
	switch mode {
	case "ready": // serves until SIGTERM, then exits 0
		ready(id)
		<-term
		fmt.Printf("sigterm %d\n", pid)
		return 0
	case "exit3-after-ready":
		ready(id)
		time.Sleep(20 * time.Millisecond)
		return 3
	case "crash-on-file":
		ready(id)
		for {
			select {
			case <-term:
				return 0
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := os.Stat(filepath.Join(os.Getenv(crashDirEnv), strconv.Itoa(pid))); err == nil {
				fmt.Fprintln(os.Stderr, "crashing")
				return 3
			}
		}
	case "never-ready": // fails at start-up
		fmt.Fprintln(os.Stderr, "cannot start: no such thing")
		return 1
	case "hang": // never reports ready, ignores SIGTERM
		time.Sleep(time.Hour)
		return 0
	case "bad-line":
		f := os.NewFile(3, "ready")
		fmt.Fprintln(f, "listening on :8080")
		f.Close()
		time.Sleep(time.Hour)
		return 0
	case "slow-stop": // ignores SIGTERM: only SIGKILL ends it
		ready(id)
		<-term
		fmt.Printf("ignoring sigterm %d\n", pid)
		time.Sleep(time.Hour)
		return 0
	case "grandchild": // starts a process that ignores SIGTERM, and exits 0 on SIGTERM without it
		r, w, err := os.Pipe()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		gc := exec.Command(os.Args[0])
		gc.Env = append(os.Environ(), childEnv+"=orphan", raceAtExit)
		gc.Stdout = os.Stdout // holds the worker's stdout pipe
		gc.ExtraFiles = []*os.File{w}
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		w.Close()
		// Wait until it ignores SIGTERM: it reports ready too.
		if _, err := bufio.NewReader(r).ReadString('\n'); err != nil {
			fmt.Fprintln(os.Stderr, "grandchild not ready:", err)
			return 1
		}
		ready(fmt.Sprintf("%s child-%d", id, gc.Process.Pid))
		<-term
		return 0
	case "orphan":
		signal.Ignore(syscall.SIGTERM)
		if err := supervisor.NotifyReady(""); err != nil {
			return 2
		}
		time.Sleep(time.Hour)
		return 0
	case "extra-file": // prints the line its fd 4 holds, then serves
		line, err := bufio.NewReader(os.NewFile(4, "extra")).ReadString('\n')
		if err != nil {
			fmt.Fprintln(os.Stderr, "fd 4:", err)
			return 1
		}
		fmt.Printf("fd 4: %s", line)
		ready(id)
		<-term
		return 0
	case "chatty": // output in awkward shapes, before ready
		fmt.Print("a\n\nb\r\n" + strings.Repeat("x", 100<<10) + "\n")
		if err := supervisor.NotifyReady(id); err != nil {
			return 2
		}
		<-term
		return 0
	case "sleeper":
		time.Sleep(time.Hour)
		return 0
	case "detach": // starts a sleeper, prints its pid and exits without waiting for it
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"=sleeper")
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(cmd.Process.Pid)
		return 0
	case "function": // as a function's server: its group holds a child of its own, and an orphan a child of its left (double fork); prints both pids
		kept := exec.Command(os.Args[0])
		kept.Env = append(os.Environ(), childEnv+"=sleeper")
		if err := kept.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		mid := exec.Command(os.Args[0])
		mid.Env = append(os.Environ(), childEnv+"=detach")
		out, err := mid.Output()
		if err != nil {
			fmt.Fprintln(os.Stderr, "detach:", err)
			return 1
		}
		fmt.Printf("%d %s\n", kept.Process.Pid, strings.TrimSpace(string(out)))
		time.Sleep(time.Hour)
		return 0
	case "orphaner": // a worker that runs a function as a runner does: own group, parent-death signal
		runtime.LockOSThread() // the parent-death signal is the thread's
		fn := exec.Command(os.Args[0])
		fn.Env = append(os.Environ(), childEnv+"=function")
		fn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		out, err := fn.StdoutPipe()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := fn.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			fmt.Fprintln(os.Stderr, "function:", err)
			return 1
		}
		ready(fmt.Sprintf("%d %s", fn.Process.Pid, strings.TrimSpace(line)))
		<-term
		return 0
	case "reaper": // supervises two orphaners with ReapOrphans; prints each worker's line, then "stopped" after SIGTERM
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		sup, err := supervisor.Start(context.Background(), supervisor.Config{Workers: 2, Command: childCommand(modes("orphaner")), Logger: log, ReapOrphans: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, w := range sup.Workers() {
			fmt.Printf("%d %s\n", w.PID, w.Ready)
		}
		<-term
		if err := sup.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("stopped")
		_, _ = io.Copy(io.Discard, os.Stdin) // its children stay unreaped by init until the test closes stdin
		return 0
	case "supervisor": // supervises two workers and prints their pids
		sup, err := supervisor.Start(context.Background(), supervisor.Config{Workers: 2, Command: childCommand(func(int) string { return "ready" })})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, w := range sup.Workers() {
			fmt.Printf("worker %d\n", w.PID)
		}
		time.Sleep(time.Hour)
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s=%q: unknown mode\n", childEnv, mode)
	return 1
}

// raceAtExit stops a worker built with -race from sleeping a second on
// its way out (GORACE's atexit_sleep_ms).
var raceAtExit = "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")

// childCommand is a Config.Command that starts the test binary as a
// worker in the mode mode(slot) says.
func childCommand(mode func(slot int) string) func(int) *exec.Cmd {
	return func(slot int) *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"="+mode(slot), raceAtExit)
		return cmd
	}
}
