package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the benchmark started: in a process group of its
// own (killed whole at the end) and, on Linux, killed if the benchmark
// dies. Its standard output and error are read line by line, kept for
// error reports and searched for what it announces (its address).
type child struct {
	name string
	cmd  *exec.Cmd
	// echo passes each line to the benchmark's standard error (--verbose).
	echo bool

	mu      sync.Mutex
	lines   []string // the last maxChildLines
	total   int      // lines read so far
	changed chan struct{}

	done chan struct{} // closed once the process has been waited for
	err  error         // its exit, once done is closed
	// out is the read end of the output pipe; readDone is closed when
	// the reader has returned.
	out      *os.File
	readDone chan struct{}
}

// maxChildLines is how many of a child's last lines are kept.
const maxChildLines = 2000

// startChild starts cmd, whose Stdout and Stderr it sets.
func startChild(name string, cmd *exec.Cmd, echo bool) (*child, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	setChildProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	w.Close() // the child holds its own copy
	c := &child{name: name, cmd: cmd, echo: echo, changed: make(chan struct{}), done: make(chan struct{}),
		out: r, readDone: make(chan struct{})}
	// The reader ends when every holder of the pipe's write end (the
	// child and what it started) has exited, or when stop closes it.
	go func() {
		defer close(c.readDone)
		c.read(r)
	}()
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// finishReading waits a moment for the reader to take the child's last
// lines, then closes the pipe, which ends the reader.
func (c *child) finishReading() {
	select {
	case <-c.readDone:
	case <-time.After(2 * time.Second): // held open by a process outside the group
	}
	_ = c.out.Close()
	<-c.readDone
}

func (c *child) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if c.echo {
			fmt.Fprintf(os.Stderr, "[%s] %s\n", c.name, line)
		}
		c.mu.Lock()
		c.lines = append(c.lines, line)
		if len(c.lines) > maxChildLines {
			c.lines = append(c.lines[:0], c.lines[len(c.lines)-maxChildLines:]...)
		}
		c.total++
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
	// A line too long or a read error: keep draining so the child never
	// blocks on a full pipe (until the pipe is closed).
	_, _ = io.Copy(io.Discard, r)
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// tail returns the child's last n lines, for an error report.
func (c *child) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines[max(len(c.lines)-n, 0):], "\n")
}

// fail wraps err with the child's last lines.
func (c *child) fail(err error) error {
	return fmt.Errorf("%s: %w; its last output:\n%s", c.name, err, indent(c.tail(20)))
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

// waitLine waits until the child prints a line matching re (a line
// printed before the call counts too) and returns its submatches.
func (c *child) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := 0
	for {
		c.mu.Lock()
		// Lines dropped from the front are counted in total.
		first := c.total - len(c.lines)
		for i := max(seen-first, 0); i < len(c.lines); i++ {
			if m := re.FindStringSubmatch(c.lines[i]); m != nil {
				c.mu.Unlock()
				return m, nil
			}
		}
		seen = c.total
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-c.done:
			// Take its last lines, and look once more.
			select {
			case <-c.readDone:
			case <-time.After(time.Second):
			}
			c.mu.Lock()
			for _, line := range c.lines[max(seen-(c.total-len(c.lines)), 0):] {
				if m := re.FindStringSubmatch(line); m != nil {
					c.mu.Unlock()
					return m, nil
				}
			}
			c.mu.Unlock()
			return nil, c.fail(fmt.Errorf("exited (%v) before printing a line matching %q", c.err, re))
		case <-ctx.Done():
			return nil, c.fail(fmt.Errorf("no line matching %q within %s: %w", re, timeout, ctx.Err()))
		}
	}
}

// stop ends the child: SIGTERM to the process itself (up drains and stops
// its workers), then, after grace, SIGKILL to its whole process group;
// it waits for it either way. A child that exited on its own is only
// reaped. It returns an error only if the child could not be stopped.
func (c *child) stop(grace time.Duration) error {
	defer c.finishReading()
	select {
	case <-c.done:
		c.killGroup() // anything it left behind
		return nil
	default:
	}
	if grace > 0 {
		_ = c.cmd.Process.Signal(syscall.SIGTERM) // it may be exiting already
		select {
		case <-c.done:
			c.killGroup()
			return nil
		case <-time.After(grace):
		}
	}
	c.killGroup()
	select {
	case <-c.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit 10s after SIGKILL", c.name, c.pid())
	}
}

// killGroup sends SIGKILL to the child's process group.
func (c *child) killGroup() {
	if err := killChildGroup(c.cmd.Process); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = c.cmd.Process.Kill() // at least the child itself
	}
}

// children are the processes of one benchmark run, stopped in reverse
// order of start by stopAll.
type children struct {
	mu   sync.Mutex
	list []*child
}

func (cs *children) add(c *child) {
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
}

// stopAll stops every child still running, the last started first.
func (cs *children) stopAll(grace time.Duration) error {
	cs.mu.Lock()
	list := cs.list
	cs.list = nil
	cs.mu.Unlock()
	var errs []error
	for i := len(list) - 1; i >= 0; i-- {
		errs = append(errs, list[i].stop(grace))
	}
	return errors.Join(errs...)
}
