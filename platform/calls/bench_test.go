package calls_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
)

// The benchmarks measure what sync_interval always (an fsync before every
// acknowledgement, Shoal's default, which a 202 relies on) costs
// asynchronous calls against NATS's own lazy default, on the disk of
// b.TempDir (set TMPDIR to measure another). Compare the modes side by
// side:
//
//	go test -run x -bench . -benchtime 2s -count 5 ./platform/calls/

// syncModes are the JetStream sync policies compared.
var syncModes = []struct {
	name string
	lazy time.Duration
}{
	{"sync=always", 0},
	{"sync=2m", 2 * time.Minute},
}

// benchParallelism multiplies GOMAXPROCS into the goroutines that submit
// at once, as a gateway's concurrent requests do.
const benchParallelism = 8

// benchLimits are the default limits with room for every call a
// benchmark submits.
func benchLimits(replicas int) calls.Limits {
	l := calls.DefaultLimits()
	l.MaxQueued, l.MaxBytes, l.Replicas = 1<<30, 4<<30, replicas
	return l
}

// benchServers starts replicas servers (one, or a cluster on
// 127.0.0.2-4) with the sync policy lazy and returns a JetStream client
// with the calls set up, and a function that stops it all.
func benchServers(b *testing.B, replicas int, lazy time.Duration) (jetstream.JetStream, func()) {
	b.Helper()
	var url string
	var stops []func()
	if replicas == 1 {
		s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: b.TempDir(), LazySync: lazy})
		if err != nil {
			b.Fatal(err)
		}
		url, stops = s.ClientURL(), append(stops, s.Shutdown)
	} else {
		nodes := brokertest.StartCluster(b, replicas, nil, func(c *broker.Config) { c.LazySync = lazy })
		for _, n := range nodes {
			stops = append(stops, n.Shutdown)
		}
		url = nodes[0].ClientURL()
	}
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	stop := func() {
		nc.Close()
		for _, s := range stops {
			s()
		}
	}
	js, err := jetstream.New(nc)
	if err == nil {
		err = calls.Setup(context.Background(), js, benchLimits(replicas))
	}
	if err != nil {
		stop()
		b.Fatal(err)
	}
	return js, stop
}

// benchCall is a submission of a call with a 128-byte body.
func benchCall() calls.Submission {
	return calls.Submission{Function: "bench", Msg: &nats.Msg{
		Header: nats.Header{"Shoal-Method": {"POST"}, "Shoal-Path": {"/"}},
		Data:   make([]byte, 128),
	}}
}

// submitParallel submits b.N calls from 8×GOMAXPROCS goroutines at once.
func submitParallel(b *testing.B, q *calls.Queue) {
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := q.Submit(context.Background(), benchCall()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSubmit measures Queue.Submit from 8×GOMAXPROCS goroutines at
// once: the stored (and replicated) publish to the calls stream, then the
// queued record, the work behind each 202 of POST /async-function/NAME.
func BenchmarkSubmit(b *testing.B) {
	for _, replicas := range []int{1, 3} {
		for _, mode := range syncModes {
			name := fmt.Sprintf("R%d/%s", replicas, mode.name)
			js, stop := benchServers(b, replicas, mode.lazy)
			q := calls.NewQueue(js)
			b.Run(name, func(b *testing.B) {
				submitParallel(b, q)
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
			})
			stop()
		}
	}
}

// BenchmarkCallEndToEnd measures a call from submission to its settled
// success: submitted from 8×GOMAXPROCS goroutines, pulled by one
// calls.Worker running up to 64 at once (the function answers at once),
// recorded running, then succeeded, its result published and the call
// acknowledged. An operation ends when the call's result is published.
func BenchmarkCallEndToEnd(b *testing.B) {
	const concurrency = 64
	for _, mode := range syncModes {
		js, stop := benchServers(b, 1, mode.lazy)
		var done atomic.Int64
		finished := make(chan struct{}, 1)
		sub, err := js.Conn().Subscribe(calls.ResultSubject("bench"), func(m *nats.Msg) {
			if m.Header.Get(calls.HeaderCallStatus) == string(calls.Succeeded) {
				done.Add(1)
				select {
				case finished <- struct{}{}:
				default:
				}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		w := calls.NewWorker(js, calls.WorkerConfig{Runner: "bench"})
		var inFlight atomic.Int64
		wake := make(chan struct{}, 1)
		ctx, cancel := context.WithCancel(context.Background())
		var running sync.WaitGroup
		running.Go(func() {
			w.Pull(ctx, "bench", func() int { return concurrency - int(inFlight.Load()) }, wake, func(c *calls.Call) {
				inFlight.Add(1)
				running.Go(func() {
					w.Run(c, manifest.Async{}, func() calls.Result { return calls.Result{Status: 200} })
					inFlight.Add(-1)
					select {
					case wake <- struct{}{}:
					default:
					}
				})
			})
		})
		q := calls.NewQueue(js)
		b.Run(mode.name, func(b *testing.B) {
			want := done.Load() + int64(b.N)
			submitParallel(b, q)
			for deadline := time.After(time.Minute); done.Load() < want; {
				select {
				case <-finished:
				case <-deadline:
					b.Fatalf("%d of %d calls succeeded within a minute of their submission", done.Load()-want+int64(b.N), b.N)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
		})
		cancel()
		running.Wait()
		_ = sub.Unsubscribe()
		stop()
	}
}

// BenchmarkRecent measures Queue.Recent in a bucket of 5,000 calls of
// two functions, each written three times as a runner writes it (queued,
// running, succeeded with a 64-byte body), their writes interleaved as
// calls run side by side: what a console asks for its list of calls.
func BenchmarkRecent(b *testing.B) {
	js, stop := benchServers(b, 1, 2*time.Minute)
	defer stop()
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, calls.Bucket)
	if err != nil {
		b.Fatal(err)
	}
	const n = 5000
	recs := make([]calls.Record, n)
	put := func(i int, st calls.Status) {
		r := &recs[i]
		r.Status = st
		if st == calls.Succeeded {
			r.Response = &calls.Response{Status: 200, Body: make([]byte, 64)}
		}
		data, err := json.Marshal(r)
		if err == nil {
			_, err = kv.Put(ctx, r.ID, data)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	for i := range n + 2 {
		if i < n {
			recs[i] = calls.Record{ID: calls.NewID(), Function: []string{"a", "b"}[i%2], SubmittedAt: time.Now()}
			put(i, calls.Queued)
		}
		if i >= 1 && i-1 < n {
			put(i-1, calls.Running)
		}
		if i >= 2 {
			put(i-2, calls.Succeeded)
		}
	}
	q := calls.NewQueue(js)
	for _, bc := range []struct {
		limit    int
		function string
	}{{50, ""}, {50, "a"}, {calls.MaxRecent, ""}} {
		b.Run(fmt.Sprintf("limit=%d/function=%q", bc.limit, bc.function), func(b *testing.B) {
			for b.Loop() {
				got, err := q.Recent(ctx, bc.limit, bc.function)
				if err != nil || len(got.Records) != bc.limit {
					b.Fatalf("Recent = %d records, %v; want %d", len(got.Records), err, bc.limit)
				}
			}
		})
	}
}
