package traffic_test

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/traffic"
)

// observations are the status and duration of requests to observe, a
// mix of latencies from 100µs to about 2s and of statuses.
var observations = func() (out [1024]struct {
	status int
	d      time.Duration
}) {
	rng := rand.New(rand.NewPCG(5, 6))
	statuses := []int{200, 200, 200, 200, 200, 200, 404, 499, 500, 503}
	for i := range out {
		out[i].status = statuses[rng.IntN(len(statuses))]
		out[i].d = time.Duration(float64(100*time.Microsecond) * float64(int(1)<<rng.IntN(15)) * (1 + rng.Float64()))
	}
	return out
}()

// BenchmarkObserve is the gateway's hot path: one observation per
// request, on the real clock, into one function's series (serial), or
// from all Ps at once into the same series (parallel: the mutex's worst
// case). The caller's time.Now is read once every 64 observations, so
// that its cost stays out of the figure.
func BenchmarkObserve(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		s := traffic.New().Series("f")
		now := time.Now()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if i%64 == 0 {
				now = time.Now()
			}
			o := &observations[i%len(observations)]
			s.Observe(now, o.status, o.d)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		s := traffic.New().Series("f")
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			now := time.Now()
			for i := 0; pb.Next(); i++ {
				if i%64 == 0 {
					now = time.Now()
				}
				o := &observations[i%len(observations)]
				s.Observe(now, o.status, o.d)
			}
		})
	})
}

// consoleRecorder returns a recorder on a clock stopped at now, with 10
// functions with traffic in every second of the 300s before, and their
// names: what the console asks for.
func consoleRecorder(now time.Time) (*traffic.Recorder, []string) {
	r := traffic.NewWithClock(func() time.Time { return now })
	var names []string
	for f := range 10 {
		name := "fn" + strconv.Itoa(f)
		names = append(names, name)
		s := r.Series(name)
		for sec := range 300 {
			for i := range 20 {
				o := &observations[(sec*20+i)%len(observations)]
				s.Observe(now.Add(-time.Duration(sec)*time.Second), o.status, o.d)
			}
		}
	}
	return r, names
}

// BenchmarkSnapshot reads what the console asks for: 10 functions with
// traffic in every second of a 300s window, in 5s steps.
func BenchmarkSnapshot(b *testing.B) {
	r, names := consoleRecorder(time.Now())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Snapshot(names, 300*time.Second, 5*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStatsReply is a gateway's share of another's GET /system/stats
// on the counts of BenchmarkSnapshot: answering (reading the counts and
// encoding them), then, at the gateway that asked, decoding and merging
// them. It reports the size of the JSON.
func BenchmarkStatsReply(b *testing.B) {
	now := time.Now()
	r, names := consoleRecorder(now)
	b.Run("answer", func(b *testing.B) {
		b.ReportAllocs()
		var size int
		for b.Loop() {
			c, err := r.Counts(names, 300*time.Second, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			data, err := c.MarshalJSON()
			if err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size), "bytes")
	})
	b.Run("merge", func(b *testing.B) {
		c, err := r.Counts(names, 300*time.Second, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		data, err := c.MarshalJSON()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			var o traffic.Counts
			if err := o.UnmarshalJSON(data); err != nil {
				b.Fatal(err)
			}
			if err := c.Merge(&o); err != nil {
				b.Fatal(err)
			}
		}
	})
}
