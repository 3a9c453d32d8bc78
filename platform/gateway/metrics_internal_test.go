package gateway

import (
	"net/http"
	"testing"
	"time"
)

// nopWriter is a ResponseWriter that keeps nothing.
type nopWriter struct{ h http.Header }

func (w nopWriter) Header() http.Header       { return w.h }
func (nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (nopWriter) WriteHeader(int)             {}

// observeOnce does what serveObserved adds to a request: wrap the
// writer, learn the route and the status, count and time it.
func observeOnce(m *metrics, w http.ResponseWriter, rt *route, status int) {
	start := time.Now()
	o := observe(w)
	observedRoute(o, rt)
	o.WriteHeader(status)
	m.done(o, kindSync, start)
}

// TestMetricsAllocateNothing: once a status has been seen, counting a
// request allocates nothing.
func TestMetricsAllocateNothing(t *testing.T) {
	m := newMetrics(func() float64 { return 0 }, 1)
	rt := &route{metrics: m.functions([]string{"ping"}, nil)["ping"]}
	w := nopWriter{h: http.Header{}}
	for _, status := range []int{200, 404, 503} {
		observeOnce(m, w, rt, status) // the first of a status makes its counter
		if n := testing.AllocsPerRun(1000, func() { observeOnce(m, w, rt, status) }); n != 0 {
			t.Errorf("status %d: %v allocations per request, want 0", status, n)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { observeOnce(m, w, &route{metrics: m.unknown}, 404) }); n != 0 {
		t.Errorf("unknown function: %v allocations per request, want 0", n)
	}
}

// BenchmarkMetrics measures what the metrics add to one request, from
// concurrent callers: the writer's wrapper, the status, the counter and
// the histogram.
func BenchmarkMetrics(b *testing.B) {
	m := newMetrics(func() float64 { return 0 }, 1)
	rt := &route{metrics: m.functions([]string{"ping"}, nil)["ping"]}
	w := nopWriter{h: http.Header{}}
	observeOnce(m, w, rt, 200)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			observeOnce(m, w, rt, 200)
		}
	})
}
