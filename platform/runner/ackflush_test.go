package runner

import (
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// TestFlushGroup: each concurrent waiter returns only once a round trip
// that started after its own publish has completed (so what it published
// has reached the server), and the waiters share round trips.
func TestFlushGroup(t *testing.T) {
	s := brokertest.Start(t)
	nc := brokertest.Connect(t, s)
	var (
		mu        sync.Mutex
		flushes   int
		confirmed uint64 // messages out when the last completed flush began
	)
	g := &flushGroup{nc: nc}
	g.flush = func(timeout time.Duration) error {
		start := nc.Stats().OutMsgs
		err := nc.FlushTimeout(timeout)
		mu.Lock()
		flushes++
		confirmed = max(confirmed, start)
		mu.Unlock()
		return err
	}
	var wg sync.WaitGroup
	const n = 200
	for range n {
		wg.Go(func() {
			if err := nc.Publish("acks", nil); err != nil {
				t.Error(err)
				return
			}
			mine := nc.Stats().OutMsgs // at least this many are out, ours among them
			if err := g.wait(5 * time.Second); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if confirmed < mine {
				t.Errorf("wait returned with %d messages confirmed; %d were out after this waiter's publish", confirmed, mine)
			}
		})
	}
	wg.Wait()
	t.Logf("%d waiters, %d flushes", n, flushes)
	if flushes >= n {
		t.Errorf("%d flushes for %d waiters: no round trip was shared", flushes, n)
	}
	nc.Close()
	if err := g.wait(time.Second); err == nil {
		t.Error("wait on a closed connection: no error")
	}
}
