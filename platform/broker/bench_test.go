package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// syncModes are the JetStream sync policies the benchmarks compare: the
// default, an fsync per write, and NATS's own lazy default.
var syncModes = []struct {
	name string
	lazy time.Duration
}{
	{"sync=always", 0},
	{"sync=2m", 2 * time.Minute},
}

// benchJetStream starts a server with the sync policy on b's temp
// directory (set TMPDIR to measure a given disk) and connects to it.
func benchJetStream(b *testing.B, lazy time.Duration) jetstream.JetStream {
	b.Helper()
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: b.TempDir(), LazySync: lazy})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Shutdown)
	return connectJS(b, s.ClientURL())
}

// connectJS connects a JetStream client to url for the benchmark.
func connectJS(b *testing.B, url string) jetstream.JetStream {
	b.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return js
}

// benchKVPut measures 128-byte puts to a new file bucket of replicas.
func benchKVPut(b *testing.B, js jetstream.JetStream, replicas int) {
	ctx := context.Background()
	// A cluster just formed may still be electing its leaders: retry the
	// creation, as Shoal's own commands do, for up to 30 s.
	create, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var kv jetstream.KeyValue
	err := broker.Retry(create, 5*time.Second, func(ctx context.Context) error {
		var err error
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench", Storage: jetstream.FileStorage, Replicas: replicas})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	value := make([]byte, 128)
	b.SetBytes(int64(len(value)))
	for b.Loop() {
		if _, err := kv.Put(ctx, "key", value); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJetStreamPublish measures a synchronous publish of a 128-byte
// message to an R1 file stream: the cost of the fsync per write.
func BenchmarkJetStreamPublish(b *testing.B) {
	for _, mode := range syncModes {
		b.Run(mode.name, func(b *testing.B) {
			js := benchJetStream(b, mode.lazy)
			ctx := context.Background()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "bench", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage, Replicas: 1}); err != nil {
				b.Fatal(err)
			}
			msg := make([]byte, 128)
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, err := js.Publish(ctx, "bench.x", msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkKVPutR3 measures a 128-byte KV put to an R3 file bucket on a
// three-node cluster on loopback (127.0.0.2-4), as the cluster manifests
// run the platform's state: what a write waits for is the Raft log,
// replicated and (with sync=always) synced.
func BenchmarkKVPutR3(b *testing.B) {
	for _, mode := range syncModes {
		b.Run(mode.name, func(b *testing.B) {
			nodes := brokertest.StartCluster(b, 3, nil, func(c *broker.Config) { c.LazySync = mode.lazy })
			benchKVPut(b, connectJS(b, nodes[0].ClientURL()), 3)
		})
	}
}

// BenchmarkKVPut measures a 128-byte KV put to an R1 file bucket.
func BenchmarkKVPut(b *testing.B) {
	for _, mode := range syncModes {
		b.Run(mode.name, func(b *testing.B) {
			benchKVPut(b, benchJetStream(b, mode.lazy), 1)
		})
	}
}
