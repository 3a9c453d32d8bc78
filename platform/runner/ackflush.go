package runner

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// flushGroup confirms published acks with the server in groups: one
// PING/PONG round trip covers every ack published before it started, so
// that concurrent invocations share a flush instead of each paying one.
type flushGroup struct {
	nc *nats.Conn
	// flush, when set, replaces nc.FlushTimeout (a test counts flushes).
	flush func(time.Duration) error
	mu    sync.Mutex
	// next gathers the callers waiting for the next flush; nil when none.
	next *flushBatch
	// leading is set while a flush is under way or handed over.
	leading bool
}

type flushBatch struct {
	done chan struct{}
	err  error
	// lead is closed when the batch's own waiters are to flush it: one
	// of them claims the job.
	lead    chan struct{}
	claimed atomic.Bool
}

// wait returns once everything the caller published before calling it
// has reached the server (or the flush failed). A caller that finds no
// flush under way flushes its batch itself; then it hands the next batch
// to that batch's own waiters, so that nobody flushes for others for
// long while its own invocation waits.
func (g *flushGroup) wait(timeout time.Duration) error {
	g.mu.Lock()
	if g.next == nil {
		g.next = &flushBatch{done: make(chan struct{}), lead: make(chan struct{})}
	}
	b := g.next
	if g.leading {
		g.mu.Unlock()
		select {
		case <-b.done:
			return b.err
		case <-b.lead:
		}
		if !b.claimed.CompareAndSwap(false, true) {
			<-b.done
			return b.err
		}
		g.mu.Lock() // b is still g.next: nobody else took it
	} else {
		g.leading = true
		b.claimed.Store(true)
	}
	g.next = nil
	g.mu.Unlock()
	if g.flush != nil {
		b.err = g.flush(timeout)
	} else {
		b.err = g.nc.FlushTimeout(timeout)
	}
	close(b.done)
	g.mu.Lock()
	if g.next == nil {
		g.leading = false
	} else {
		close(g.next.lead) // leading stays set: the next batch flushes itself
	}
	g.mu.Unlock()
	return b.err
}
