package supervisor

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// Orphans.
//
// A worker's children can be killed with it (its process group, their
// parent-death signal), but not every process they start in turn: a
// grandchild in another process group outlives them, and the system
// gives it a new parent, the nearest child subreaper or init. With
// [Config].ReapOrphans the supervisor's process is that subreaper, and
// the supervisor kills its orphans and reaps them.

const (
	// reapInterval paces the sweeps between workers' exits: what a
	// function orphans while its worker runs is killed within it.
	reapInterval = 5 * time.Second
	// reapAgain is the pace of the sweeps while they find orphans: the
	// members of a killed group reach the supervisor's process as their
	// parents die.
	reapAgain = 100 * time.Millisecond
	// reapWait bounds the wait of a sweep for the orphans it killed to
	// exit; one that takes longer (stuck in the kernel) is reaped by a
	// later sweep.
	reapWait = 500 * time.Millisecond
	// finalSweeps bounds the sweeps of Stop.
	finalSweeps = 10
)

// reaper sweeps the orphans: on a worker's exit, every reapInterval,
// and at Stop. Only one sweep runs at a time: the reaper goroutine's, or
// Stop's once that goroutine has ended.
type reaper struct {
	soon chan struct{} // a worker exited: sweep now (buffered, 1)
	quit chan struct{} // closed by Stop once the workers are gone
	done chan struct{} // closed when the reaper goroutine ends

	// killed is what sweeps signalled and logged, by pid, with the
	// process's start time (the pid may name another process later):
	// a process that does not die at once is not logged twice.
	killed map[int]uint64
}

// startReaper makes this process a child subreaper and starts the
// reaper goroutine; without a subreaper (not Linux, or the kernel
// refuses), it logs why and the supervisor reaps nothing.
func (s *Supervisor) startReaper() {
	if err := setSubreaper(true); err != nil {
		if !errors.Is(err, errors.ErrUnsupported) {
			s.log.Warn("cannot become a child subreaper: processes orphaned by the workers' children are not killed", "error", err)
		}
		return
	}
	s.reaper = &reaper{
		soon:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		killed: map[int]uint64{},
	}
	go s.reapLoop()
}

// reapSoon asks for a sweep: a worker has exited, and its orphans are on
// their way.
func (s *Supervisor) reapSoon() {
	if s.reaper != nil {
		select {
		case s.reaper.soon <- struct{}{}:
		default:
		}
	}
}

func (s *Supervisor) reapLoop() {
	r := s.reaper
	defer close(r.done)
	t := time.NewTimer(reapInterval)
	defer t.Stop()
	for {
		select {
		case <-r.quit:
			return
		case <-r.soon:
		case <-t.C:
		}
		next := reapInterval
		if s.sweep() > 0 {
			next = reapAgain
		}
		t.Reset(next)
	}
}

// stopReaper ends the reaper goroutine, sweeps until no orphan is left
// (bounded) and makes this process an ordinary one again. Stop calls it
// once every worker has been reaped.
func (s *Supervisor) stopReaper() {
	r := s.reaper
	if r == nil {
		return
	}
	close(r.quit)
	<-r.done
	for range finalSweeps {
		if s.sweep() == 0 {
			break
		}
		time.Sleep(reapAgain)
	}
	if err := setSubreaper(false); err != nil {
		s.log.Warn("cannot stop being a child subreaper", "error", err)
	}
}

// procStat is a process, as /proc/PID/stat shows it.
type procStat struct {
	ppid, pgid int
	state      byte   // R, S, D, Z (zombie), ...
	start      uint64 // since boot, in clock ticks
	comm       string
}

func (p procStat) dead() bool { return p.state == 'Z' || p.state == 'X' }

// sweep kills the orphans, the children of this process that are not
// workers, and reaps them. It returns how many processes it killed or
// reaped.
//
// An orphan's process group is killed with it when its leader is gone or
// is an orphan too: that is what is left of a dead worker's function. An
// orphan in a group led by a process that a live worker still runs (a
// function whose middle process exited) is left alone: the worker kills
// that group when its leader exits. An orphan in any other group (the
// supervisor's own) is killed alone.
func (s *Supervisor) sweep() int {
	// Forks wait while the processes are listed: a worker just forked,
	// not yet among the slots' workers, would be taken for an orphan.
	s.forking.Lock()
	s.mu.Lock()
	workers := map[int]bool{}
	for _, sl := range s.slots {
		for _, w := range sl.live {
			workers[w.pid] = true
		}
	}
	s.mu.Unlock()
	procs, err := listProcs()
	s.forking.Unlock()
	if err != nil {
		s.log.Warn("cannot list processes to find orphans", "error", err)
		return 0
	}
	r := s.reaper
	for pid, start := range r.killed {
		if p, ok := procs[pid]; !ok || p.start != start {
			delete(r.killed, pid)
		}
	}
	self, selfGroup := os.Getpid(), syscall.Getpgrp()
	// underWorker: pid is a live worker or one of its descendants.
	underWorker := func(pid int) bool {
		for range 256 { // a bound, in case of a cycle in a racy listing
			if workers[pid] {
				return true
			}
			p, ok := procs[pid]
			if !ok || pid <= 1 || pid == self {
				return false
			}
			pid = p.ppid
		}
		return false
	}
	n := 0
	kill := func(pid int, p procStat, attrs ...any) {
		if p.dead() {
			return
		}
		if start, ok := r.killed[pid]; ok && start == p.start {
			return
		}
		r.killed[pid] = p.start
		n++
		s.log.Warn("killed an orphaned process", append([]any{"pid", pid, "command", p.comm}, attrs...)...)
	}
	var reap []int
	for pid, p := range procs {
		if p.ppid != self || workers[pid] {
			continue
		}
		g := p.pgid
		leader, hasLeader := procs[g]
		switch {
		case p.dead():
		case g > 1 && g != selfGroup && hasLeader && underWorker(g):
			continue // a live worker's, which kills the group
		case g > 1 && g != selfGroup && (!hasLeader || leader.ppid == self):
			_ = syscall.Kill(-g, syscall.SIGKILL)
			for q, qp := range procs {
				if qp.pgid == g && q != pid {
					kill(q, qp, "group", g)
				}
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
			kill(pid, p, "group", g)
		default:
			_ = syscall.Kill(pid, syscall.SIGKILL)
			kill(pid, p)
		}
		reap = append(reap, pid)
	}
	// Reap those pids only: waiting for any child would take the exits
	// of the workers from os/exec.
	deadline := time.Now().Add(reapWait)
	for len(reap) > 0 {
		left := reap[:0]
		for _, pid := range reap {
			switch reaped, err := reapChild(pid); {
			case err != nil: // not a child any more
				delete(r.killed, pid)
			case reaped:
				delete(r.killed, pid)
				n++
				s.log.Debug("reaped an orphaned process", "pid", pid, "command", procs[pid].comm)
			default:
				left = append(left, pid)
			}
		}
		reap = left
		if len(reap) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return n
}
