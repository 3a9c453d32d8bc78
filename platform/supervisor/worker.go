package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A worker is one process. Four goroutines serve it: one reads its
// readiness line, two its stdout and stderr, and one waits for its exit
// and reports it last, after the three others have ended; the monitor
// therefore sees a worker's events in order and its exit after its last
// line of output.
type worker struct {
	slot    *slot
	cmd     *exec.Cmd
	pid     int
	started time.Time
	readers sync.WaitGroup // readiness, stdout, stderr
	exited  atomic.Bool    // reaped (for the readiness reader's message)

	// Guarded by Supervisor.mu.
	state    string
	ready    string
	req      *request  // starting: waits for it to be ready; stopping: for its exit
	killAt   time.Time // stopping: when the drain runs out
	killed   bool      // sent SIGKILL
	startErr error     // why it is not ready, if it failed to start

	// mu orders signals before the reaping, after which the pid may
	// name another process.
	mu       sync.Mutex
	reaped   bool
	lastLine string // its last non-empty line on stderr
}

const (
	// maxLine bounds a line of output; a longer one arrives in pieces.
	maxLine = 64 << 10
	// maxReadyLine bounds the readiness line.
	maxReadyLine = 4 << 10
	// outputGrace is how long the output of an exited worker is read
	// for: a process that left the worker's group may hold its pipes.
	outputGrace = time.Second
)

// spawn forks a worker for the slot. It is called by the slot's monitor
// with Supervisor.mu held, and releases it meanwhile: Command is the
// caller's code, and a fork takes milliseconds.
func (s *Supervisor) spawn(sl *slot) (*worker, error) {
	s.mu.Unlock()
	s.forking.RLock()
	cmd, files, err := s.fork(sl.n)
	s.mu.Lock()
	if err != nil {
		s.forking.RUnlock()
		return nil, err
	}
	w := &worker{slot: sl, cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), state: StateStarting}
	sl.live = append(sl.live, w)
	s.forking.RUnlock()
	s.log.Debug("worker started", "worker", sl.n, "pid", w.pid, "path", cmd.Path)
	w.readers.Add(3)
	s.wg.Add(4)
	go s.awaitReady(w, files[0])
	go s.copyOutput(w, "stdout", files[1])
	go s.copyOutput(w, "stderr", files[2])
	go s.wait(w, files)
	return w, nil
}

// fork starts a worker process, and returns it with the parent's ends of
// its readiness, stdout and stderr pipes.
func (s *Supervisor) fork(slot int) (*exec.Cmd, []*os.File, error) {
	cmd := s.cfg.Command(slot)
	if cmd == nil {
		panic("supervisor: Config.Command returned nil")
	}
	var parentEnds, childEnds []*os.File // read ends, write ends
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	for range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(parentEnds)
			closeAll(childEnds)
			return nil, nil, fmt.Errorf("create a pipe: %w", err)
		}
		parentEnds, childEnds = append(parentEnds, r), append(childEnds, w)
	}
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(slices.Clip(env), EnvReadyFD+"=3")                  // the last value wins
	cmd.ExtraFiles = append([]*os.File{childEnds[0]}, cmd.ExtraFiles...) // fd 3, then Command's
	cmd.Stdout, cmd.Stderr = childEnds[1], childEnds[2]
	setProcAttr(cmd)
	err := cmd.Start()
	// The child has its copies: the readers see EOF once it and its own
	// children have exited.
	closeAll(childEnds)
	if err != nil {
		closeAll(parentEnds)
		return nil, nil, err
	}
	return cmd, parentEnds, nil
}

// awaitReady reads the worker's readiness line and reports it.
func (s *Supervisor) awaitReady(w *worker, r *os.File) {
	defer s.wg.Done()
	defer w.readers.Done()
	defer r.Close()
	_ = r.SetReadDeadline(w.started.Add(s.cfg.Ready))
	detail, err := readReady(bufio.NewReaderSize(r, maxReadyLine))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && w.exited.Load():
		err = errors.New("exited before reporting ready")
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("not ready within %v", s.cfg.Ready)
	}
	if err != nil {
		w.slot.events <- event{kind: evNotReady, w: w, err: err}
		return
	}
	w.slot.events <- event{kind: evReady, w: w, detail: detail}
}

// errNoReadyLine: the readiness pipe was closed without a line.
var errNoReadyLine = errors.New("exited or closed fd 3 before reporting ready")

// readReady reads a readiness line, "ready" or "ready DETAIL", and
// returns DETAIL.
func readReady(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	switch {
	case err == nil, err == io.EOF && len(line) > 0:
	case err == io.EOF:
		return "", errNoReadyLine
	case errors.Is(err, bufio.ErrBufferFull):
		return "", fmt.Errorf("readiness line longer than %d bytes", br.Size())
	default:
		return "", err
	}
	text := strings.TrimRight(string(line), "\r\n")
	detail, ok := strings.CutPrefix(text, "ready")
	if !ok || detail != "" && detail[0] != ' ' {
		return "", fmt.Errorf("readiness line %q does not start with \"ready\"", text)
	}
	return strings.TrimPrefix(detail, " "), nil
}

// copyOutput passes each line of a worker's stdout or stderr on.
func (s *Supervisor) copyOutput(w *worker, stream string, r *os.File) {
	defer s.wg.Done()
	defer w.readers.Done()
	defer r.Close()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			text := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
			if stream == "stderr" && text != "" {
				w.mu.Lock()
				w.lastLine = text
				w.mu.Unlock()
			}
			if s.cfg.Output != nil {
				s.cfg.Output(w.slot.n, w.pid, stream, text)
			} else {
				s.log.Info(text, "worker", w.slot.n, "pid", w.pid, "stream", stream)
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// wait reaps the worker and reports its exit, after its other events.
func (s *Supervisor) wait(w *worker, pipes []*os.File) {
	defer s.wg.Done()
	var err error
	if waitExited(w.pid) == nil {
		// Exited, not reaped: the pid still names the worker's group,
		// so what is left of the group can be killed safely.
		w.mu.Lock()
		_ = signalGroup(w.cmd.Process, syscall.SIGKILL)
		err = w.cmd.Wait()
		w.reaped = true
		w.mu.Unlock()
	} else {
		err = w.cmd.Wait()
		w.mu.Lock()
		w.reaped = true
		w.mu.Unlock()
	}
	at := time.Now()
	w.exited.Store(true)
	s.reapSoon() // its children's orphans
	for _, p := range pipes {
		_ = p.SetReadDeadline(at.Add(outputGrace)) // fails if the reader is done
	}
	w.readers.Wait()
	w.slot.events <- event{kind: evExit, w: w, err: err, at: at}
}

// signal signals the worker's process group, unless the worker has been
// reaped.
func (w *worker) signal(sig syscall.Signal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.reaped {
		_ = signalGroup(w.cmd.Process, sig)
	}
}

func (w *worker) lastStderr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastLine
}

// exitString says how a reaped worker ended: "exit status 3",
// "signal: killed".
func exitString(w *worker, err error) string {
	if ps := w.cmd.ProcessState; ps != nil {
		return ps.String()
	}
	if err != nil {
		return err.Error()
	}
	return "exited"
}
