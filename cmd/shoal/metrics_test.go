package main

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/promtest"
	"github.com/shoal-dev/shoal/platform/broker"
)

// promScrape is one scrape of a /metrics endpoint, by family name.
type promScrape promtest.Families

// scrapeMetrics GETs url (a /metrics endpoint) and parses the text
// exposition, as Prometheus would.
func scrapeMetrics(t *testing.T, url string) promScrape {
	t.Helper()
	return promScrape(promtest.Scrape(t, url))
}

// sum adds up the series of family name whose labels include want
// (name, value, ...), by their worker label.
func (s promScrape) sum(name string, want ...string) map[string]float64 {
	out := map[string]float64{}
	for _, m := range s[name].GetMetric() {
		match := true
		for i := 0; i < len(want); i += 2 {
			match = match && promtest.Label(m, want[i]) == want[i+1]
		}
		if !match {
			continue
		}
		v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
		out[promtest.Label(m, "worker")] += v
	}
	return out
}

// workers returns the worker labels of family name, sorted.
func (s promScrape) workers(name string) []string {
	var out []string
	for _, m := range s[name].GetMetric() {
		if w := promtest.Label(m, "worker"); w != "" && !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	slices.Sort(out)
	return out
}

// TestUpMetrics: the gateway's GET /metrics in shoal up shows the
// gateway's metrics and every worker's, labelled worker="SLOT"; the
// workers' invocation counts add up to what the gateway served. After a
// worker is SIGKILLed and re-forked, /metrics still answers and shows the
// new worker under the same slot.
func TestUpMetrics(t *testing.T) {
	c := startCluster(t, 2)
	noDataRace(t, c.p)
	c.waitWorkers(10*time.Second, allReady(2))
	const n = 40
	for range n {
		if status, body := get(t, c.gw+"/function/ping"); status != 200 || body != "pong!" {
			t.Fatalf("ping = %d %q", status, body)
		}
	}
	get(t, c.gw+"/function/nope")

	s := scrapeMetrics(t, c.gw+"/metrics")
	if got := s.sum("shoal_gateway_requests_total", "function", "ping", "route", "sync", "code", "200")[""]; got != n {
		t.Errorf("gateway requests_total{ping,200} = %v, want %d", got, n)
	}
	if got := s.sum("shoal_gateway_requests_total", "function", "_unknown", "code", "404")[""]; got != 1 {
		t.Errorf("gateway requests_total{_unknown,404} = %v, want 1", got)
	}
	byWorker := s.sum("shoal_runner_invocations_total", "function", "ping")
	ok := s.sum("shoal_runner_invocations_total", "function", "ping", "outcome", "ok")
	if ok["1"]+ok["2"] != n || byWorker["1"]+byWorker["2"] != n || len(byWorker) != 2 {
		t.Errorf("runner invocations of ping by worker = %v (ok: %v), want %d in all over workers 1 and 2", byWorker, ok, n)
	}
	t.Logf("ping served by worker: %v", ok)
	for _, name := range []string{"shoal_runner_invocations_total", "shoal_runner_invocation_duration_seconds",
		"shoal_runner_concurrency_in_use", "shoal_runner_concurrency_limit", "process_resident_memory_bytes", "go_goroutines"} {
		if got := s.workers(name); !slices.Equal(got, []string{"1", "2"}) {
			t.Errorf("%s: workers %v, want [1 2]", name, got)
		}
	}
	if got := s.sum("shoal_runner_concurrency_limit", "function", "ping", "worker", "2")["2"]; got != 1000 {
		t.Errorf("runner concurrency_limit{ping, worker 2} = %v, want 1000", got)
	}
	// up's own process metrics have no worker label.
	if got := s.sum("process_resident_memory_bytes")[""]; got <= 0 {
		t.Errorf("up's process_resident_memory_bytes = %v", got)
	}

	// SIGKILL worker 1: /metrics answers throughout, and shows the new
	// worker 1 once it serves.
	var victim WorkerStatus
	for _, w := range c.ps() {
		if w.Worker == 1 {
			victim = w
		}
	}
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	scrapeMetrics(t, c.gw+"/metrics")
	t.Logf("a scrape right after the kill took %s", time.Since(start).Round(time.Millisecond))
	c.waitWorkers(10*time.Second, func(ws []WorkerStatus) bool {
		return allReady(2)(ws) && !slices.Contains(pids(ws), victim.PID)
	})
	for range 4 {
		get(t, c.gw+"/function/ping")
	}
	s = scrapeMetrics(t, c.gw+"/metrics")
	if got := s.workers("shoal_runner_invocations_total"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("after the re-fork: workers %v, want [1 2]", got)
	}
	// The new worker 1 counts from zero: what it and worker 2 served
	// since is at most 4 more than worker 2 had.
	after := s.sum("shoal_runner_invocations_total", "function", "ping", "outcome", "ok")
	if after["1"] > 4 || after["2"] < ok["2"] || after["1"]+after["2"]-ok["2"] != 4 {
		t.Errorf("after the re-fork, ping ok by worker = %v (before: %v), want 4 more, worker 1 counting afresh", after, ok)
	}
	if got := s.sum("shoal_gateway_requests_total", "function", "ping", "code", "200")[""]; got != n+4 {
		t.Errorf("gateway requests_total{ping,200} = %v, want %d", got, n+4)
	}

	// A rolling restart while /metrics is scraped without pause: each
	// slot's listener passes from the old worker to the new one; every
	// scrape answers, and the old workers drain and exit at once (none
	// is left blocked on the listener it shared).
	stop := make(chan struct{})
	scrapes := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 10 * time.Second}
		n := 0
		for {
			select {
			case <-stop:
				t.Logf("%d scrapes during the rolling restart", n)
				scrapes <- nil
				return
			default:
			}
			resp, err := client.Get(c.gw + "/metrics")
			if err != nil {
				scrapes <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				scrapes <- fmt.Errorf("GET /metrics: %s", resp.Status)
				return
			}
			n++
		}
	}()
	started := time.Now()
	if err := c.p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	c.p.waitLog(`msg="rolling restart done"`)
	if took := time.Since(started); took > 10*time.Second {
		t.Errorf("the rolling restart took %s: an old worker was slow to stop", took)
	}
	close(stop)
	if err := <-scrapes; err != nil {
		t.Errorf("a scrape during the rolling restart failed: %v", err)
	}
	if strings.Count(c.p.output(), "signal: killed") > 1 { // the first is the SIGKILL above
		t.Errorf("a worker was killed during the rolling restart:\n%s", c.p.output())
	}
	c.waitWorkers(5*time.Second, allReady(2))
	if got := scrapeMetrics(t, c.gw+"/metrics").workers("shoal_runner_invocations_total"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("after the rolling restart: workers %v, want [1 2]", got)
	}
}

// TestRunnerMetricsEndpoint: shoal runner --health serves the runner's
// metrics at /metrics next to its probes.
func TestRunnerMetricsEndpoint(t *testing.T) {
	data := t.TempDir()
	up := startShoal(t, "up", "-f", repoManifest(t), "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "1", "--nats-context", "")
	natsURL := up.waitLog(`msg="nats listening" url=(\S+)`)[1]
	gw := up.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	r := startShoal(t, "runner", "--nats", natsURL, "--nats-nkey", credentialsPath(data)+"/"+string(broker.RoleRunner)+".nk",
		"--health", "127.0.0.1:0", "--drain-timeout", "5s")
	probes := r.waitLog(`msg="health endpoint listening" url=(\S+)`)[1]
	r.waitLog(`msg="runner serving"`)
	const n = 30
	for range n {
		if status, _ := get(t, gw+"/function/ping"); status != 200 {
			t.Fatalf("ping = %d", status)
		}
	}
	own := scrapeMetrics(t, probes+"/metrics")
	mine := own.sum("shoal_runner_invocations_total", "function", "ping", "outcome", "ok")[""]
	workers := scrapeMetrics(t, gw+"/metrics").sum("shoal_runner_invocations_total", "function", "ping", "outcome", "ok")["1"]
	if mine+workers != n {
		t.Errorf("ping served: %v by the runner, %v by up's worker; want %d in all", mine, workers, n)
	}
	t.Logf("ping served: %v by the runner, %v by up's worker", mine, workers)
	if _, ok := own["go_goroutines"]; !ok {
		t.Error("the runner's /metrics has no Go metrics")
	}
	if _, ok := own["shoal_runner_concurrency_limit"]; !ok {
		t.Error("the runner's /metrics has no shoal_runner_concurrency_limit")
	}
	// The runner serves no auth function (no --key): it has no series for it.
	if got := own.sum("shoal_runner_concurrency_limit", "function", "auth"); len(got) != 0 {
		t.Errorf("the runner reports auth, which it does not serve: %v", got)
	}
	if status, _ := get(t, probes+"/readyz"); status != 200 {
		t.Errorf("/readyz = %d", status)
	}
	if err := r.stop(syscall.SIGTERM); err != nil {
		t.Errorf("runner exit: %v", err)
	}
}
