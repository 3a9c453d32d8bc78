package main

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/invocation"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/keyring"
)

// timedOutcome is one request's result and when it was sent.
type timedOutcome struct {
	sent, done time.Time
	status     int
	err        error
}

// timedLoad sends GET url from callers goroutines until stop is closed or
// limit has passed, at most max requests each, and returns every outcome.
func timedLoad(url string, callers, max int, limit time.Duration, stop <-chan struct{}) func() []timedOutcome {
	client := &http.Client{Timeout: 20 * time.Second}
	deadline := time.Now().Add(limit)
	var mu sync.Mutex
	var outs []timedOutcome
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range max { // bounded in count and in time
				select {
				case <-stop:
					return
				default:
				}
				if time.Now().After(deadline) {
					return
				}
				o := timedOutcome{sent: time.Now()}
				resp, err := client.Get(url)
				if err != nil {
					o.err = err
				} else {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					o.status = resp.StatusCode
				}
				o.done = time.Now()
				mu.Lock()
				outs = append(outs, o)
				mu.Unlock()
			}
		})
	}
	return func() []timedOutcome {
		wg.Wait()
		return outs
	}
}

// servedBy returns the invocations of function each runner completed, by
// runner id.
func servedBy(t *testing.T, nc *nats.Conn, function string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, st := range serviceStats(t, nc) {
		out[invocation.RunnerID(st.ServiceIdentity)] += completed(t, st, function)
	}
	return out
}

// TestMultiNode runs the multi-machine shape on loopback: a three-node
// NATS cluster on 127.0.0.2–4 with JetStream (platform state R3), a
// runner on each node (the one on node 1 serves auth and starts before
// anything is deployed) and a gateway on node 3, all real processes. It shows that a function deployed through one node is served
// through all; that load spreads across the runners on both nodes; and
// that stopping node 2 under load loses only the invocations in flight to
// it, while its runner reconnects to the rest of the cluster.
func TestMultiNode(t *testing.T) {
	data := t.TempDir()
	dir := t.TempDir()
	creds, err := broker.EnsureCredentials(credentialsPath(data))
	if err != nil {
		t.Fatal(err)
	}
	nodes := brokertest.StartCluster(t, 3, creds.Users())
	url := func(i int) string { return nodes[i].ClientURL() }
	if _, errOut, code := runShoal(t, dir, "init", "--data", data); code != 0 {
		t.Fatalf("shoal init: %s", errOut)
	}
	admin := func(node int) []string { return []string{"--data", data, "--nats", url(node)} }
	// A runner that serves the auth function starts before anything is
	// deployed, as pods do: it waits for the catalog, and must not create
	// the users' buckets itself (with one replica) meanwhile.
	early := startShoal(t, "runner", "--nats", url(0), "--nats-nkey", creds.SeedFile(broker.RoleAuth),
		"--key", keyFilePath(data), "--drain-timeout", "5s", "--health", "127.0.0.1:0")
	probes := early.waitLog(`msg="health endpoint listening" url=(\S+)`)[1]
	early.waitLog(`msg="waiting for functions to be deployed`)
	// Its probes: alive, not ready until it serves.
	if status, body := get(t, probes+"/healthz"); status != 200 {
		t.Errorf("runner /healthz while waiting = %d %s", status, body)
	}
	if status, body := get(t, probes+"/readyz"); status != 503 || !strings.Contains(body, "starting") {
		t.Errorf("runner /readyz while waiting = %d %s, want 503", status, body)
	}
	if _, errOut, code := runShoal(t, dir, append([]string{"key", "publish", "--replicas", "3"}, admin(0)...)...); code != 0 {
		t.Fatalf("shoal key publish: %s", errOut)
	}
	v1 := writeFile(t, dir, "v1.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 2s, concurrency: 1000}
`)
	if _, errOut, code := runShoal(t, dir, append([]string{"deploy", "-f", v1, "--replicas", "3"}, admin(0)...)...); code != 0 {
		t.Fatalf("shoal deploy: %s", errOut)
	}
	early.waitLog(`msg="runner serving"`)
	if status, body := get(t, probes+"/readyz"); status != 200 {
		t.Errorf("runner /readyz once serving = %d %s", status, body)
	}

	// The platform's state is replicated on the three nodes.
	js, err := jetstream.New(connectAs(t, url(1), creds.SeedFile(broker.RoleAdmin)))
	if err != nil {
		t.Fatal(err)
	}
	for _, bucket := range []string{catalog.Bucket, keyring.Bucket, auth.UsersBucket, auth.FailuresBucket} {
		info, err := js.Stream(t.Context(), "KV_"+bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", bucket, err)
		}
		if r := info.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("bucket %s has %d replicas, want 3", bucket, r)
		}
	}

	runnerOn := func(node int) *proc {
		p := startShoal(t, "runner", "--nats", url(node), "--nats-nkey", creds.SeedFile(broker.RoleRunner), "--drain-timeout", "5s")
		p.waitLog(`msg="runner serving"`)
		return p
	}
	r2 := runnerOn(1)
	runnerOn(2)
	gwp := startShoal(t, "gateway", "--nats", url(2), "--nats-nkey", creds.SeedFile(broker.RoleGateway), "--http", "127.0.0.1:0")
	gw := gwp.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	if status, body := get(t, gw+"/function/ping"); status != 200 || body != "pong!" {
		t.Fatalf("ping = %d %q", status, body)
	}

	// A function deployed through node 1 is served through every node:
	// over HTTP by the gateway on node 3, and straight over NATS from
	// clients of each node.
	v2 := writeFile(t, dir, "v2.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 2s, concurrency: 1000}
  echo: {handler: {builtin: echo}, public: true}
`)
	if out, errOut, code := runShoal(t, dir, append([]string{"deploy", "-f", v2}, admin(0)...)...); code != 0 {
		t.Fatalf("shoal deploy v2 = %d %s %s", code, out, errOut)
	}
	took := waitStatus(t, gw+"/function/echo", 200, 5*time.Second)
	t.Logf("echo, deployed through node 1, routable at the gateway on node 3 after %s", took)
	for i := range nodes {
		nc := connectAs(t, url(i), creds.SeedFile(broker.RoleClient), nats.CustomInboxPrefix(broker.ClientInboxPrefix))
		reply, err := nc.Request("fn.echo", []byte("via node"), 5*time.Second)
		if err != nil || reply.Header.Get("Shoal-Status") != "200" {
			t.Errorf("fn.echo through node %d: %v %v", i+1, err, reply)
		}
	}

	// Load spreads across the runners of both nodes.
	obs := connectAs(t, url(2), creds.SeedFile(broker.RoleAdmin))
	before := servedBy(t, obs, "ping")
	outs := timedLoad(gw+"/function/ping", 8, 100, 10*time.Second, nil)()
	after := servedBy(t, obs, "ping")
	if len(after) != 3 {
		t.Fatalf("runners seen: %v, want 3", after)
	}
	var total uint64
	for id := range after {
		total += after[id] - before[id]
	}
	for id := range after {
		share := float64(after[id]-before[id]) / float64(total)
		t.Logf("runner %s served %.0f%% of %d invocations", id, 100*share, total)
		if share < 0.15 {
			t.Errorf("runner %s served %.0f%% of the load, want a fair share", id, 100*share)
		}
	}
	for _, o := range outs {
		if o.err != nil || o.status != 200 {
			t.Fatalf("a request failed before any node stopped: %v %d", o.err, o.status)
		}
	}

	// Node 2 stops while a bounded load runs.
	const callers = 8
	stopLoad := make(chan struct{})
	wait := timedLoad(gw+"/function/ping", callers, 5000, 15*time.Second, stopLoad)
	time.Sleep(time.Second)
	stopped := time.Now()
	nodes[1].Shutdown()
	down := time.Since(stopped)
	r2.waitLog(`msg="nats reconnected"`)
	reconnected := time.Since(stopped)
	time.Sleep(2 * time.Second)
	close(stopLoad)
	outs = wait()
	var failed []timedOutcome
	okAfter := 0
	for _, o := range outs {
		switch {
		case o.err != nil || o.status != 200:
			failed = append(failed, o)
		case o.sent.After(stopped):
			okAfter++
		}
	}
	t.Logf("node 2 stopped under load (its shutdown took %s): %d requests, %d failed, %d answered after the stop; runner 2 reconnected after %s",
		down.Round(time.Millisecond), len(outs), len(failed), okAfter, reconnected.Round(time.Millisecond))
	if len(failed) > 0 {
		first, lastSent, lastDone := failed[0].sent, failed[0].sent, failed[0].done
		for _, o := range failed {
			if o.sent.Before(first) {
				first = o.sent
			}
			if o.sent.After(lastSent) {
				lastSent = o.sent
			}
			if o.done.After(lastDone) {
				lastDone = o.done
			}
		}
		t.Logf("error window: the failed requests were sent %+dms to %+dms after the stop began, and answered (504) by %+dms",
			first.Sub(stopped).Milliseconds(), lastSent.Sub(stopped).Milliseconds(), lastDone.Sub(stopped).Milliseconds())
	}
	for _, o := range failed {
		t.Logf("  failed: sent %+dms after the stop, answered %dms later: %d %v",
			o.sent.Sub(stopped).Milliseconds(), o.done.Sub(o.sent).Milliseconds(), o.status, o.err)
		// Only what was in flight to the stopped node may fail: sent
		// before it was down, and no more than one per caller.
		if o.sent.After(stopped.Add(down + 100*time.Millisecond)) {
			t.Errorf("a request sent %s after the node began to stop (down after %s) failed", o.sent.Sub(stopped), down)
		}
	}
	if len(failed) > callers || okAfter == 0 {
		t.Errorf("%d requests failed (at most %d were in flight); %d answered after the stop", len(failed), callers, okAfter)
	}

	// Runner 2 is back, through another node: both runners serve again,
	// and the catalog (R3, 2 of 3 nodes up) still takes deployments.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, errOut, code := runShoal(t, dir, append([]string{"list", "--json"}, admin(2)...)...)
		var list []catalog.FunctionStatus
		if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
			t.Fatalf("shoal list --json = %d %q %s", code, out, errOut)
		}
		i := slices.IndexFunc(list, func(f catalog.FunctionStatus) bool { return f.Name == "ping" })
		if i >= 0 && list[i].Runners == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runner 2 did not come back within 10s of its node stopping: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, errOut, code := runShoal(t, dir, append([]string{"deploy", "--prune", "-f", v1}, admin(0)...)...); code != 0 {
		t.Fatalf("deploy with node 2 down = %d %s %s", code, out, errOut)
	}
	// The gateway's catalog watch may have been served by node 2: the
	// ordered consumer behind it notices after two missed heartbeats
	// (5 s each) and resumes from where it was.
	took = waitStatus(t, gw+"/function/echo", 404, 30*time.Second)
	t.Logf("a removal deployed with node 2 down reached the gateway after %s", took)
}
