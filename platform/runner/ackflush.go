package runner

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// flushGroup confirms published acks with the server in groups: one
// PING/PONG round trip covers every ack published before it started, so
// that concurrent invocations share a flush instead of each paying one.
type flushGroup struct {
	nc *nats.Conn
	mu sync.Mutex
	// next gathers the callers waiting for the next flush; nil when none.
	next *flushBatch
	// leading is set while a caller runs flushes for the others.
	leading bool
}

type flushBatch struct {
	done chan struct{}
	err  error
}

// wait returns once everything the caller published before calling it
// has reached the server (or the flush failed).
func (g *flushGroup) wait(timeout time.Duration) error {
	g.mu.Lock()
	if g.next == nil {
		g.next = &flushBatch{done: make(chan struct{})}
	}
	b := g.next
	if g.leading {
		g.mu.Unlock()
		<-b.done
		return b.err
	}
	// Lead: flush batch after batch until nobody waits.
	g.leading = true
	for {
		batch := g.next
		g.next = nil
		g.mu.Unlock()
		batch.err = g.nc.FlushTimeout(timeout)
		close(batch.done)
		g.mu.Lock()
		if g.next == nil {
			g.leading = false
			g.mu.Unlock()
			return b.err
		}
	}
}
