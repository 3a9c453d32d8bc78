package main

import (
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/promtest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-dev/shoal/platform/supervisor"
)

// TestWorkerMetricsGather: the slots' listeners, served as a worker
// serves its inherited one, are scraped at once; each metric gets its
// slot's worker label; a slot not ready, or whose worker does not answer
// in time, is left out without failing the rest; closed, the listeners
// are gone.
func TestWorkerMetricsGather(t *testing.T) {
	wm, err := newWorkerMetrics(4)
	if err != nil {
		t.Fatal(err)
	}
	wm.timeout = 300 * time.Millisecond
	// os/exec asks each extra file for its descriptor at every fork:
	// that must not put the socket, shared with the slot's running
	// worker, into blocking mode.
	for slot := 1; slot <= 4; slot++ {
		fd := wm.files(slot)[0].Fd()
		flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		if errno != 0 || flags&syscall.O_NONBLOCK == 0 {
			t.Errorf("slot %d: the listener is in blocking mode once asked for its descriptor (flags %#x, %v)", slot, flags, errno)
		}
	}
	var servers []*http.Server
	// Slots 1 to 3 are served, as shoal runner --health-fd serves: from
	// a copy of the descriptor the worker inherits. Slot 4's listener is
	// open but nobody accepts on it, as for a worker that hangs.
	for slot := 1; slot <= 3; slot++ {
		ln, err := net.FileListener(wm.files(slot)[0])
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		served := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "test_served_total", Help: "Served."}, []string{"function", "worker"})
		served.WithLabelValues("ping", "a worker's own worker label, replaced").Add(float64(10 * slot))
		reg.MustRegister(served, prometheus.NewGauge(prometheus.GaugeOpts{Name: "test_up", Help: "Up."}))
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
		go func() { _ = srv.Serve(ln) }()
		servers = append(servers, srv)
	}
	state := map[int]string{1: supervisor.StateReady, 2: supervisor.StateReady, 3: supervisor.StateStarting, 4: supervisor.StateReady}
	wm.follow(func() []supervisor.WorkerInfo {
		var ws []supervisor.WorkerInfo
		for slot := 1; slot <= 4; slot++ {
			ws = append(ws, supervisor.WorkerInfo{Slot: slot, State: state[slot]})
		}
		return ws
	})

	start := time.Now()
	mfs, err := wm.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Gather took %s: the workers are scraped at once, each within 300ms", took)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + " worker=" + promtest.Label(m, "worker")
			if f := promtest.Label(m, "function"); f != "" {
				key += " function=" + f
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if len(m.GetLabel()) > 1 && m.GetLabel()[0].GetName() > m.GetLabel()[1].GetName() {
				t.Errorf("%s: labels not sorted: %v", mf.GetName(), m.GetLabel())
			}
		}
	}
	want := map[string]float64{
		"test_served_total worker=1 function=ping": 10,
		"test_served_total worker=2 function=ping": 20,
		"test_up worker=1":                         0,
		"test_up worker=2":                         0,
	}
	if len(got) != len(want) {
		t.Errorf("gathered %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	// Merged with the gateway's, as /metrics does: consistent.
	if _, err := (prometheus.Gatherers{prometheus.NewRegistry(), wm}).Gather(); err != nil {
		t.Errorf("Gatherers: %v", err)
	}

	for _, srv := range servers {
		srv.Close()
	}
	addr := wm.slots[0].ln.Addr().String()
	wm.close()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("slot 1's listener %s still accepts connections after close", addr)
	}
}
