package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// IdleConns are keep-alive connections that each made one request and
// now sit idle, holding the server's per-connection memory.
type IdleConns struct {
	clients []*HTTPClient
	// Failed is how many connections could not be opened or answered
	// wrongly; they are closed.
	Failed int
	// FirstError is the first of their errors.
	FirstError error
}

// idleRequestTimeout bounds the one request made on each idle
// connection, from the dial to the end of the answer.
const idleRequestTimeout = 10 * time.Second

// OpenIdle opens n connections to t's server, makes t's request once on
// each (parallel at a time) and keeps open those that were answered as
// expected. Each request is bounded by 10 s; when ctx ends, the requests
// under way are cut and OpenIdle returns. Close releases what it opened.
func OpenIdle(ctx context.Context, t Target, n, parallel int) (*IdleConns, error) {
	if n < 0 || parallel < 1 {
		return nil, fmt.Errorf("loadgen: %d idle connections, %d at a time: want n >= 0 and parallel >= 1", n, parallel)
	}
	ic := &IdleConns{}
	var mu sync.Mutex
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range min(parallel, max(n, 1)) {
		wg.Go(func() {
			for range jobs {
				c := NewHTTPClient(t)
				timer := time.AfterFunc(idleRequestTimeout, func() { _ = c.Close() })
				stop := context.AfterFunc(ctx, func() { _ = c.Close() })
				err := c.Do()
				timedOut, canceled := !timer.Stop(), !stop()
				switch {
				case err != nil:
				case timedOut:
					err = fmt.Errorf("no answer within %s", idleRequestTimeout)
				case canceled:
					err = ctx.Err()
				case c.conn == nil:
					err = fmt.Errorf("the server closed the connection after its answer")
				}
				mu.Lock()
				if err != nil {
					_ = c.Close() // failed: counted, not kept
					ic.Failed++
					if ic.FirstError == nil {
						ic.FirstError = err
					}
				} else {
					ic.clients = append(ic.clients, c)
				}
				mu.Unlock()
			}
		})
	}
	var err error
feed:
	for range n {
		select {
		case jobs <- struct{}{}:
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	return ic, err
}

// Open is the number of connections held open.
func (ic *IdleConns) Open() int { return len(ic.clients) }

// Alive counts the connections held open that the server has not closed
// since (checked without blocking: no data, no end of stream). It
// returns -1 where the check is not available.
func (ic *IdleConns) Alive() int {
	n := 0
	for _, c := range ic.clients {
		alive, ok := connAlive(c.conn)
		if !ok {
			return -1
		}
		if alive {
			n++
		}
	}
	return n
}

// Close closes every connection.
func (ic *IdleConns) Close() {
	for _, c := range ic.clients {
		_ = c.Close() // idle, done with
	}
	ic.clients = nil
}
