package runner

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// TestFlushGroup: concurrent waiters each return only once what they
// published before waiting has reached the server, sharing round trips.
func TestFlushGroup(t *testing.T) {
	s := brokertest.Start(t)
	sub := brokertest.Connect(t, s)
	var got atomic.Int64
	if _, err := sub.Subscribe("acks", func(*nats.Msg) { got.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := brokertest.Connect(t, s)
	g := &flushGroup{nc: nc}
	var wg sync.WaitGroup
	const n = 200
	before := nc.Stats().OutMsgs
	for range n {
		wg.Go(func() {
			if err := nc.Publish("acks", nil); err != nil {
				t.Error(err)
				return
			}
			if err := g.wait(5 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if sent := nc.Stats().OutMsgs - before; sent != n {
		t.Fatalf("%d messages sent, want %d", sent, n)
	}
	// Everything was confirmed by the server: a round trip on the
	// subscriber's side then sees all of it delivered.
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() != n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got.Load() != n {
		t.Errorf("%d of %d acks delivered", got.Load(), n)
	}
	nc.Close()
	if err := g.wait(time.Second); err == nil {
		t.Error("wait on a closed connection: no error")
	}
}
