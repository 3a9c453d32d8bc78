package traffic_test

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/traffic"
)

// t0 is on a whole minute, so that steps of every size start on it.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a fake clock, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock(at time.Time) *clock {
	c := new(clock)
	c.set(at)
	return c
}

func (c *clock) now() time.Time         { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(at time.Time)       { c.ns.Store(at.UnixNano()) }
func (c *clock) add(d time.Duration)    { c.ns.Add(int64(d)) }
func at(offset time.Duration) time.Time { return t0.Add(offset) }

// snapshot takes a snapshot of one function, failing the test on error.
func snapshot(t *testing.T, r *traffic.Recorder, fn string, window, step time.Duration) traffic.FunctionStats {
	t.Helper()
	snap, err := r.Snapshot([]string{fn}, window, step)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Functions[0]
}

// requests returns the requests of each point.
func requests(fs traffic.FunctionStats) []uint64 {
	var out []uint64
	for _, p := range fs.Series {
		out = append(out, p.Requests)
	}
	return out
}

func TestSnapshotSteps(t *testing.T) {
	tests := []struct {
		name         string
		observed     []time.Duration // ends of requests, after t0
		now          time.Duration
		window, step time.Duration
		first        time.Duration // start of the first point, after t0
		want         []uint64
	}{
		{"steps are aligned, the last holds now",
			[]time.Duration{4 * time.Second, 5 * time.Second, 9999 * time.Millisecond, 10 * time.Second, 12 * time.Second},
			12500 * time.Millisecond, 10 * time.Second, 5 * time.Second, 5 * time.Second, []uint64{2, 2}},
		{"one-second steps",
			[]time.Duration{0, 500 * time.Millisecond, 3 * time.Second, 9 * time.Second, 9900 * time.Millisecond},
			9500 * time.Millisecond, 10 * time.Second, time.Second, 0, []uint64{2, 0, 0, 1, 0, 0, 0, 0, 0, 2}},
		{"one step: the one in progress",
			[]time.Duration{59 * time.Second, 60 * time.Second, 61 * time.Second},
			61 * time.Second, time.Minute, time.Minute, time.Minute, []uint64{2}},
		{"a second ahead counts once its second comes",
			[]time.Duration{11 * time.Second},
			10200 * time.Millisecond, 10 * time.Second, 5 * time.Second, 5 * time.Second, []uint64{0, 0}},
		{"further ahead counts now",
			[]time.Duration{time.Hour, 11 * time.Second},
			10200 * time.Millisecond, 10 * time.Second, 5 * time.Second, 5 * time.Second, []uint64{0, 1}},
		{"before the window",
			[]time.Duration{-time.Second, 4 * time.Second},
			10200 * time.Millisecond, 10 * time.Second, 5 * time.Second, 5 * time.Second, []uint64{0, 0}},
		{"the whole ring in minutes",
			[]time.Duration{0, 10 * time.Second, 60 * time.Second, 119 * time.Second, 300 * time.Second, 599 * time.Second},
			599500 * time.Millisecond, traffic.MaxWindow, time.Minute, 0, []uint64{2, 2, 0, 0, 0, 1, 0, 0, 0, 1}},
		{"the whole ring in 3-second steps",
			[]time.Duration{0, 1 * time.Second, 3 * time.Second, 5 * time.Second, 599 * time.Second, 600 * time.Second},
			600 * time.Second, traffic.MaxWindow, 3 * time.Second, 3 * time.Second, append(append([]uint64{2}, make([]uint64, 197)...), 1, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock(at(tt.now))
			r := traffic.NewWithClock(c.now)
			s := r.Series("f")
			for _, o := range tt.observed {
				s.Observe(at(o), 200, time.Millisecond)
			}
			fs := snapshot(t, r, "f", tt.window, tt.step)
			if got := requests(fs); !slices.Equal(got, tt.want) {
				t.Errorf("requests per point = %v, want %v", got, tt.want)
			}
			var sum uint64
			for i, p := range fs.Series {
				sum += p.Requests
				if want := at(tt.first + time.Duration(i)*tt.step); !p.Time.Equal(want) {
					t.Errorf("point %d starts %s, want %s", i, p.Time, want)
				}
			}
			if fs.Total.Requests != sum {
				t.Errorf("total %d, want the sum of the points, %d", fs.Total.Requests, sum)
			}
		})
	}
}

// A point's rate is over its step, or the seconds elapsed for the one in
// progress; the total's over the seconds from the first point to now.
func TestRates(t *testing.T) {
	c := newClock(at(12500 * time.Millisecond))
	r := traffic.NewWithClock(c.now)
	s := r.Series("f")
	for _, o := range []time.Duration{5, 6, 10, 12} {
		s.Observe(at(o*time.Second), 200, time.Millisecond)
	}
	fs := snapshot(t, r, "f", 10*time.Second, 5*time.Second)
	tests := []struct {
		name      string
		got, want float64
	}{
		{"full step", fs.Series[0].Rate, 2.0 / 5},
		{"step in progress", fs.Series[1].Rate, 2 / 2.5},
		{"total", fs.Total.Rate, 4 / 7.5},
	}
	for _, tt := range tests {
		if math.Abs(tt.got-tt.want) > 1e-9 {
			t.Errorf("%s: rate %v, want %v", tt.name, tt.got, tt.want)
		}
	}

	// Just after a step starts, its rate is over one second.
	c.set(at(15100 * time.Millisecond))
	s.Observe(at(15*time.Second), 200, time.Millisecond)
	if fs := snapshot(t, r, "f", 10*time.Second, 5*time.Second); fs.Series[1].Rate != 1 {
		t.Errorf("rate of a step 0.1s old with one request = %v, want 1", fs.Series[1].Rate)
	}
}

func TestClassification(t *testing.T) {
	tests := []struct {
		status               int
		errors, clientErrors uint64
	}{
		{200, 0, 0}, {204, 0, 0}, {302, 0, 0},
		{400, 0, 1}, {404, 0, 1}, {429, 0, 1}, {499, 0, 1},
		{500, 1, 0}, {502, 1, 0}, {503, 1, 0}, {504, 1, 0},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			c := newClock(at(0))
			r := traffic.NewWithClock(c.now)
			r.Series("f").Observe(at(0), tt.status, time.Millisecond)
			r.Series("f").Observe(at(0), 200, time.Millisecond)
			tot := snapshot(t, r, "f", 10*time.Second, time.Second).Total
			if tot.Requests != 2 || tot.Errors != tt.errors || tot.ClientErrors != tt.clientErrors {
				t.Errorf("requests, errors, client errors = %d, %d, %d; want 2, %d, %d",
					tot.Requests, tot.Errors, tot.ClientErrors, tt.errors, tt.clientErrors)
			}
			if want := float64(tt.errors) / 2; tot.ErrorRate != want {
				t.Errorf("error rate %v, want %v", tot.ErrorRate, want)
			}
		})
	}
}

// After more than MaxWindow, nothing of before is left, not even in the
// latency extremes.
func TestRollover(t *testing.T) {
	c := newClock(at(0))
	r := traffic.NewWithClock(c.now)
	s := r.Series("f")
	for sec := range 600 {
		c.set(at(time.Duration(sec) * time.Second))
		s.Observe(c.now(), 500, 2*time.Second)
	}
	if tot := snapshot(t, r, "f", traffic.MaxWindow, time.Second).Total; tot.Requests != 600 {
		t.Fatalf("%d requests, want 600", tot.Requests)
	}
	c.add(11 * time.Minute)
	fs := snapshot(t, r, "f", traffic.MaxWindow, time.Second)
	if fs.Total != (traffic.Figures{}) {
		t.Errorf("total after 11 minutes idle = %+v, want zeros", fs.Total)
	}
	for i, p := range fs.Series {
		if p.Figures != (traffic.Figures{}) {
			t.Fatalf("point %d after 11 minutes idle = %+v, want zeros", i, p.Figures)
		}
	}
	s.Observe(c.now(), 200, 3*time.Millisecond)
	tot := snapshot(t, r, "f", traffic.MaxWindow, time.Second).Total
	if tot.Requests != 1 || tot.Errors != 0 || tot.P50 != 3 || tot.P99 != 3 {
		t.Errorf("total = %+v, want one request of 3ms", tot)
	}
}

// A slot is reused after exactly MaxWindow: its old counts go, and an
// observation of its old second is then too late.
func TestSlotReused(t *testing.T) {
	c := newClock(at(0))
	r := traffic.NewWithClock(c.now)
	s := r.Series("f")
	for range 5 {
		s.Observe(at(0), 503, 2*time.Second)
	}
	c.add(traffic.MaxWindow)
	s.Observe(at(traffic.MaxWindow), 200, 3*time.Millisecond)
	s.Observe(at(0), 503, 2*time.Second) // late: its slot holds a later second
	last := snapshot(t, r, "f", 10*time.Second, time.Second).Series[9]
	if !last.Time.Equal(at(traffic.MaxWindow)) {
		t.Fatalf("last point at %s, want %s", last.Time, at(traffic.MaxWindow))
	}
	if last.Requests != 1 || last.Errors != 0 || last.P50 != 3 || last.P99 != 3 {
		t.Errorf("reused slot = %+v, want one request of 3ms", last.Figures)
	}
}

func TestLateObservations(t *testing.T) {
	tests := []struct {
		name   string
		latest time.Duration // observed first
		late   time.Duration
		counts bool
	}{
		{"same second", 100 * time.Second, 100 * time.Second, true},
		{"a minute late", 100 * time.Second, 40 * time.Second, true},
		{"within the ring", 600 * time.Second, 1 * time.Second, true},
		{"past the ring, its slot reused", 600 * time.Second, 0, false},
		{"past the ring, its slot not reused", 605 * time.Second, 4 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock(at(tt.latest))
			r := traffic.NewWithClock(c.now)
			s := r.Series("f")
			s.Observe(at(tt.latest), 200, time.Millisecond)
			s.Observe(at(tt.late), 200, time.Millisecond)
			// An observation past the ring would be out of any window
			// now; going back by a wall clock step shows whether it was
			// kept.
			c.set(at(tt.late))
			got := snapshot(t, r, "f", 10*time.Second, time.Second).Series[9].Requests
			want := uint64(0)
			if tt.counts {
				want = 1
				if tt.late == tt.latest {
					want = 2
				}
			}
			if got != want {
				t.Errorf("requests in the late second = %d, want %d", got, want)
			}
		})
	}
}

// When the wall clock steps back, observations go on counting.
func TestClockStepsBack(t *testing.T) {
	c := newClock(at(time.Hour))
	r := traffic.NewWithClock(c.now)
	s := r.Series("f")
	s.Observe(c.now(), 200, time.Millisecond)
	c.set(at(0))
	for range 3 {
		s.Observe(c.now(), 200, time.Millisecond)
	}
	c.add(time.Second)
	s.Observe(c.now(), 200, time.Millisecond)
	if got := requests(snapshot(t, r, "f", 10*time.Second, time.Second)); !slices.Equal(got[8:], []uint64{3, 1}) {
		t.Errorf("requests per second after the step back = %v, want 3 then 1", got)
	}
}

// After the wall clock steps back, a second recorded before the step and
// not ahead of the clock is kept: an observation 600s older than it,
// which would take its slot, is dropped.
func TestClockStepsBackKeepsSeconds(t *testing.T) {
	c := newClock(at(time.Hour))
	r := traffic.NewWithClock(c.now)
	s := r.Series("f")
	s.Observe(at(time.Hour-5*time.Second), 200, time.Millisecond)
	s.Observe(at(time.Hour), 200, time.Millisecond)
	c.set(at(time.Hour - 6*time.Second))
	s.Observe(at(time.Hour-5*time.Second-traffic.MaxWindow), 200, time.Millisecond)
	c.add(time.Second)
	if got := requests(snapshot(t, r, "f", 10*time.Second, time.Second))[9]; got != 1 {
		t.Errorf("requests of the second recorded before the step = %d, want 1", got)
	}
}

// percentile is the exact nearest-rank pth percentile of sorted, in ms.
func percentile(sorted []time.Duration, p int) float64 {
	k := (p*len(sorted) + 99) / 100
	return float64(sorted[max(k, 1)-1]) / 1e6
}

// relErr is the relative error of got against want.
func relErr(got, want float64) float64 { return math.Abs(got-want) / want }

func TestPercentiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	gen := func(n int, f func(i int) time.Duration) []time.Duration {
		ds := make([]time.Duration, n)
		for i := range ds {
			ds[i] = f(i)
		}
		return ds
	}
	ms := func(x float64) time.Duration { return time.Duration(x * 1e6) }
	tests := []struct {
		name   string
		ds     []time.Duration
		maxErr float64
	}{
		{"uniform 1..100ms", gen(1000, func(i int) time.Duration { return ms(1 + 99*float64(i)/999) }), 0.12},
		{"uniform 0.1..100ms", gen(1000, func(i int) time.Duration { return ms(0.1 * float64(i+1)) }), 0.12},
		{"exponential, mean 20ms", gen(10000, func(int) time.Duration { return ms(20 * rng.ExpFloat64()) }), 0.12},
		{"log-normal, median 30ms", gen(10000, func(int) time.Duration { return ms(30 * math.Exp(rng.NormFloat64())) }), 0.12},
		{"uniform 200ms..20s", gen(5000, func(int) time.Duration { return ms(200 + 19800*rng.Float64()) }), 0.12},
		{"uniform under 50µs", gen(1000, func(i int) time.Duration { return time.Duration(i%40+1) * time.Microsecond }), 0.12},
		{"sparse: ten requests 1..10ms", gen(10, func(i int) time.Duration { return ms(float64(i + 1)) }), 0.12},
		{"all equal", gen(100, func(int) time.Duration { return 7 * time.Millisecond }), 0},
		{"one request", []time.Duration{42 * time.Millisecond}, 0},
		{"two spikes: within a bucket", gen(100, func(i int) time.Duration { return ms(10 + 90*float64(i/50)) }), traffic.BucketRatio - 1},
	}
	var worst float64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock(at(0))
			r := traffic.NewWithClock(c.now)
			for _, d := range tt.ds {
				r.Series("f").Observe(at(0), 200, d)
			}
			tot := snapshot(t, r, "f", 10*time.Second, time.Second).Total
			sorted := slices.Clone(tt.ds)
			slices.Sort(sorted)
			for _, q := range []struct {
				name string
				p    int
				got  float64
			}{{"p50", 50, tot.P50}, {"p99", 99, tot.P99}} {
				want := percentile(sorted, q.p)
				e := relErr(q.got, want)
				if e > tt.maxErr+0.0005/want { // the figures are to the µs
					t.Errorf("%s = %.3fms, want %.3fms within %.0f%% (off by %.1f%%)", q.name, q.got, want, 100*tt.maxErr, 100*e)
				}
				t.Logf("%s = %.3fms, exact %.3fms: %.2f%%", q.name, q.got, want, 100*e)
				worst = max(worst, e)
			}
		})
	}
	t.Logf("worst relative error: %.2f%%", 100*worst)
}

// Whatever the durations, a percentile is within a bucket of the true
// value: a factor BucketRatio.
func TestPercentileBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var worst float64
	for i := range 300 {
		// Up to 5 spikes anywhere from 50µs to 60s, at random weights:
		// the worst case for interpolation.
		var ds []time.Duration
		for range 1 + rng.IntN(5) {
			d := time.Duration(float64(traffic.FirstBound) * math.Pow(1.2e6, rng.Float64()))
			for range 1 + rng.IntN(200) {
				ds = append(ds, d)
			}
		}
		c := newClock(at(0))
		r := traffic.NewWithClock(c.now)
		for _, d := range ds {
			r.Series("f").Observe(at(0), 200, d)
		}
		tot := snapshot(t, r, "f", 10*time.Second, time.Second).Total
		slices.Sort(ds)
		for _, q := range []struct {
			p   int
			got float64
		}{{50, tot.P50}, {99, tot.P99}} {
			want := percentile(ds, q.p)
			ratio := max(q.got/want, want/q.got)
			worst = max(worst, ratio)
			if ratio > traffic.BucketRatio+0.0005/want {
				t.Errorf("case %d: p%d = %.3fms, want %.3fms within a factor %v", i, q.p, q.got, want, traffic.BucketRatio)
			}
		}
	}
	t.Logf("worst factor: %.3f", worst)
}

func TestRetain(t *testing.T) {
	c := newClock(at(0))
	r := traffic.NewWithClock(c.now)
	old := r.Series("b")
	for _, fn := range []string{"a", "b", "c"} {
		r.Series(fn).Observe(at(0), 200, time.Millisecond)
	}
	r.Retain([]string{"c", "a", "new"})
	old.Observe(at(0), 200, time.Millisecond) // a request of b still in flight
	snap, err := r.Snapshot([]string{"a", "b", "c"}, 10*time.Second, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, fs := range snap.Functions {
		got = append(got, fs.Total.Requests)
	}
	if want := []uint64{1, 0, 1}; !slices.Equal(got, want) {
		t.Errorf("requests of a, b, c after Retain(a, c) = %v, want %v", got, want)
	}
	if r.Series("b") == old {
		t.Error("b deployed again got its dropped series back")
	}
}

func TestSnapshotFunctions(t *testing.T) {
	c := newClock(at(7 * time.Second))
	r := traffic.NewWithClock(c.now)
	r.Series("b").Observe(at(6*time.Second), 200, time.Millisecond)
	r.Series("unlisted").Observe(at(6*time.Second), 200, time.Millisecond)
	snap, err := r.Snapshot([]string{"z", "b", "a", "b"}, 20*time.Second, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Now.Equal(at(7*time.Second)) || snap.Window != 20 || snap.Step != 5 {
		t.Errorf("snapshot at %s, window %d, step %d; want %s, 20, 5", snap.Now, snap.Window, snap.Step, at(7*time.Second))
	}
	var names []string
	for _, fs := range snap.Functions {
		names = append(names, fs.Name)
		if len(fs.Series) != 4 || !fs.Series[0].Time.Equal(at(-10*time.Second)) {
			t.Errorf("%s: %d points from %v, want 4 from %s", fs.Name, len(fs.Series), fs.Series[0].Time, at(-10*time.Second))
		}
		want := traffic.Figures{}
		if fs.Name == "b" {
			want = traffic.Figures{Requests: 1, Rate: 1.0 / 17, P50: 1, P99: 1}
		}
		if fs.Total != want {
			t.Errorf("%s: total %+v, want %+v", fs.Name, fs.Total, want)
		}
	}
	if want := []string{"a", "b", "z"}; !slices.Equal(names, want) {
		t.Errorf("functions %v, want %v", names, want)
	}
}

func TestBadWindow(t *testing.T) {
	tests := []struct {
		name         string
		window, step time.Duration
		ok           bool
	}{
		{"console default", 300 * time.Second, 5 * time.Second, true},
		{"shortest", traffic.MinWindow, traffic.MinStep, true},
		{"longest", traffic.MaxWindow, traffic.MaxStep, true},
		{"one step", time.Minute, time.Minute, true},
		{"window too short", 9 * time.Second, time.Second, false},
		{"window too long", traffic.MaxWindow + time.Minute, time.Minute, false},
		{"step zero", time.Minute, 0, false},
		{"step negative", time.Minute, -time.Second, false},
		{"step too long", 10 * time.Minute, 2 * time.Minute, false},
		{"step longer than the window", 10 * time.Second, 20 * time.Second, false},
		{"window not a multiple", 300 * time.Second, 7 * time.Second, false},
		{"fractional step", 10 * time.Second, 2500 * time.Millisecond, false},
		{"fractional window", 10500 * time.Millisecond, time.Second, false},
	}
	r := traffic.NewWithClock(newClock(at(0)).now)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, err := r.Snapshot([]string{"f"}, tt.window, tt.step)
			if tt.ok {
				if err != nil || len(snap.Functions[0].Series) != int(tt.window/tt.step) {
					t.Errorf("Snapshot(%s, %s) = %v; want %d points", tt.window, tt.step, err, tt.window/tt.step)
				}
				return
			}
			if !errors.Is(err, traffic.ErrBadWindow) || snap != nil {
				t.Errorf("Snapshot(%s, %s) = %v, want ErrBadWindow", tt.window, tt.step, err)
			}
		})
	}
}

// Observations from many goroutines while snapshots are read and the
// clock moves on: nothing is lost, and totals only grow.
func TestConcurrent(t *testing.T) {
	const goroutines, each = 8, 5000
	c := newClock(at(0))
	r := traffic.NewWithClock(c.now)
	statuses := []int{200, 404, 500, 503}
	var observers sync.WaitGroup
	for g := range goroutines {
		observers.Go(func() {
			s := r.Series("f")
			for i := range each {
				if i%500 == 0 {
					c.add(time.Second) // 80s in all, within the window
				}
				s.Observe(c.now(), statuses[(g+i)%len(statuses)], time.Duration(i)*time.Microsecond)
				if i%1000 == 0 {
					r.Series("other").Observe(c.now(), 200, time.Millisecond)
					r.Retain([]string{"f", "other"})
				}
			}
		})
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		var last uint64
		for {
			select {
			case <-done:
				return
			default:
			}
			snap, err := r.Snapshot([]string{"f", "other"}, traffic.MaxWindow, time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			n := snap.Functions[0].Total.Requests
			if n < last {
				t.Errorf("total went from %d down to %d", last, n)
				return
			}
			last = n
		}
	})
	observers.Wait()
	close(done)
	readers.Wait()

	tot := snapshot(t, r, "f", traffic.MaxWindow, time.Minute).Total
	const n = goroutines * each
	if tot.Requests != n || tot.Errors != n/2 || tot.ClientErrors != n/4 {
		t.Errorf("requests, errors, client errors = %d, %d, %d; want %d, %d, %d",
			tot.Requests, tot.Errors, tot.ClientErrors, n, n/2, n/4)
	}
}

func TestObserveAllocs(t *testing.T) {
	c := newClock(at(0))
	s := traffic.NewWithClock(c.now).Series("f")
	s.Observe(at(0), 200, time.Millisecond) // makes the ring
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		s.Observe(at(time.Duration(i)*time.Millisecond), 500, time.Duration(i)*time.Millisecond)
	})
	if allocs != 0 {
		t.Errorf("Observe allocates %v times, want 0", allocs)
	}
}

// The JSON the console reads.
func TestSnapshotJSON(t *testing.T) {
	c := newClock(at(10 * time.Second))
	r := traffic.NewWithClock(c.now)
	s := r.Series("f")
	s.Observe(at(3*time.Second), 200, 10*time.Millisecond)
	s.Observe(at(10*time.Second), 503, 10*time.Millisecond)
	snap, err := r.Snapshot([]string{"f"}, 20*time.Second, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"now":"2026-03-01T12:00:10Z","window":20,"step":10,"gateways":1,"partial":false,"functions":[{"name":"f",` +
		`"total":{"requests":2,"errors":1,"client_errors":0,"rate":0.2,"error_rate":0.5,"p50_ms":10,"p99_ms":10},"series":[` +
		`{"t":"2026-03-01T12:00:00Z","requests":1,"errors":0,"client_errors":0,"rate":0.1,"error_rate":0,"p50_ms":10,"p99_ms":10},` +
		`{"t":"2026-03-01T12:00:10Z","requests":1,"errors":1,"client_errors":0,"rate":1,"error_rate":1,"p50_ms":10,"p99_ms":10}]}]}`
	if string(b) != want {
		t.Errorf("JSON\n%s\nwant\n%s", b, want)
	}
}
