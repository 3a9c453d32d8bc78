package traffic_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/traffic"
)

// counts reads the counts of fns, failing the test on error.
func counts(t testing.TB, r *traffic.Recorder, fns []string, window, step time.Duration) *traffic.Counts {
	t.Helper()
	c, err := r.Counts(fns, window, step)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// overTheWire encodes c and decodes it, as a gateway's reply travels.
func overTheWire(t testing.TB, c *traffic.Counts) *traffic.Counts {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var out traffic.Counts
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return &out
}

// TestMergeEqualsOneRecorder: the counts of recorders that each observed
// part of the requests, merged (over the wire), read the same figures as
// one recorder that observed them all. Property-style: random requests,
// functions, statuses and latencies, windows and steps, fixed seeds.
func TestMergeEqualsOneRecorder(t *testing.T) {
	windows := []struct{ window, step time.Duration }{
		{10 * time.Second, time.Second},
		{60 * time.Second, 10 * time.Second},
		{300 * time.Second, 5 * time.Second},
		{traffic.MaxWindow, time.Minute},
		{traffic.MaxWindow, 3 * time.Second},
	}
	statuses := []int{200, 200, 200, 201, 404, 429, 499, 500, 503, 504}
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		w := windows[int(seed)%len(windows)]
		gateways := 2 + rng.IntN(3)
		// now is anywhere in a step, up to 11 minutes after t0.
		now := at(time.Duration(rng.Int64N(int64(11 * time.Minute))))
		clock := func() time.Time { return now }
		one := traffic.NewWithClock(clock)
		parts := make([]*traffic.Recorder, gateways)
		for i := range parts {
			parts[i] = traffic.NewWithClock(clock)
		}
		fns := []string{"a", "b", "c", "d"}
		for range rng.IntN(3000) {
			fn := fns[rng.IntN(3)] // d has no traffic
			if rng.IntN(10) == 0 {
				fn = "only-in-one" // in one part, not asked for
			}
			// Within the ring, a little before the window too.
			end := now.Add(-time.Duration(rng.Int64N(int64(traffic.MaxWindow))))
			d := time.Duration(float64(traffic.FirstBound) * float64(rng.IntN(1<<rng.IntN(22))+1) * rng.Float64())
			status := statuses[rng.IntN(len(statuses))]
			one.Series(fn).Observe(end, status, d)
			p := parts[0]
			if fn != "only-in-one" {
				p = parts[rng.IntN(gateways)]
			}
			p.Series(fn).Observe(end, status, d)
		}
		asked := append(slices.Clone(fns), "only-in-one")
		want, err := one.Snapshot(asked, w.window, w.step)
		if err != nil {
			t.Fatal(err)
		}
		// Each part asked for a different list: the functions merge as
		// a union.
		merged := counts(t, parts[0], asked, w.window, w.step)
		for _, p := range parts[1:] {
			if err := merged.Merge(overTheWire(t, counts(t, p, fns, w.window, w.step))); err != nil {
				t.Fatal(err)
			}
		}
		got := merged.Snapshot()
		if got.Gateways != gateways {
			t.Errorf("seed %d: %d gateways, want %d", seed, got.Gateways, gateways)
		}
		got.Gateways = 1
		if !reflect.DeepEqual(got, want) {
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			t.Fatalf("seed %d (%d gateways, window %s, step %s): merged\n%s\nwant\n%s", seed, gateways, w.window, w.step, gb, wb)
		}
		// Merging in another order gives the same.
		rev := counts(t, parts[gateways-1], fns, w.window, w.step)
		for i := gateways - 2; i >= 0; i-- {
			if err := rev.Merge(counts(t, parts[i], asked, w.window, w.step)); err != nil {
				t.Fatal(err)
			}
		}
		r := rev.Snapshot()
		r.Gateways = 1
		if !reflect.DeepEqual(r, want) {
			t.Fatalf("seed %d: merged in reverse order, the figures differ", seed)
		}
	}
}

// Steps merge by their start: a recorder whose clock is a little off
// merges into the window of the Counts merged into, its steps outside
// that window left out.
func TestMergeClocksDiffer(t *testing.T) {
	// The first Counts' clock is at 12:00:08: steps of 5s at 12:00:00
	// and 12:00:05, a request in each.
	now := at(8 * time.Second)
	tests := []struct {
		name     string
		skew     time.Duration   // of the other recorder's clock
		observed []time.Duration // the other's requests, after t0
		want     []uint64        // requests per step, merged
	}{
		{"same clock", 0, []time.Duration{time.Second, 7 * time.Second}, []uint64{2, 2}},
		{"behind, the same steps", -2 * time.Second, []time.Duration{time.Second, 5 * time.Second}, []uint64{2, 2}},
		{"ahead, the same steps", time.Second, []time.Duration{time.Second, 8 * time.Second}, []uint64{2, 2}},
		// The other's steps are 12:00:05 and 12:00:10, past the window.
		{"ahead, its next step left out", 4 * time.Second, []time.Duration{7 * time.Second, 11 * time.Second}, []uint64{1, 2}},
		// The other's steps are 11:59:55, before the window, and 12:00:00.
		{"behind, its previous step left out", -5 * time.Second, []time.Duration{-4 * time.Second, 2 * time.Second}, []uint64{2, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := traffic.NewWithClock(func() time.Time { return now })
			b := traffic.NewWithClock(func() time.Time { return now.Add(tt.skew) })
			a.Series("f").Observe(at(time.Second), 200, time.Millisecond)
			a.Series("f").Observe(at(6*time.Second), 200, time.Millisecond)
			for _, o := range tt.observed {
				b.Series("f").Observe(at(o), 200, time.Millisecond)
			}
			c := counts(t, a, []string{"f"}, 10*time.Second, 5*time.Second)
			if err := c.Merge(overTheWire(t, counts(t, b, []string{"f"}, 10*time.Second, 5*time.Second))); err != nil {
				t.Fatal(err)
			}
			s := c.Snapshot()
			if !s.Now.Equal(now) {
				t.Errorf("now %s, want the first Counts' %s", s.Now, now)
			}
			if got := requests(s.Functions[0]); !slices.Equal(got, tt.want) {
				t.Errorf("requests per step %v, want %v", got, tt.want)
			}
			if s.Functions[0].Series[0].Time != at(0) {
				t.Errorf("first step at %s, want %s", s.Functions[0].Series[0].Time, at(0))
			}
		})
	}
}

func TestMergeMismatch(t *testing.T) {
	r := traffic.NewWithClock(newClock(at(0)).now)
	r.Series("f").Observe(at(0), 200, time.Millisecond)
	tests := []struct {
		name         string
		window, step time.Duration
	}{
		{"another window", 60 * time.Second, 5 * time.Second},
		{"another step", 300 * time.Second, 10 * time.Second},
		{"both", 10 * time.Second, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := counts(t, r, []string{"f"}, 300*time.Second, 5*time.Second)
			before, _ := json.Marshal(c)
			err := c.Merge(counts(t, r, []string{"f", "g"}, tt.window, tt.step))
			if !errors.Is(err, traffic.ErrMismatch) {
				t.Fatalf("Merge = %v, want ErrMismatch", err)
			}
			if after, _ := json.Marshal(c); string(after) != string(before) {
				t.Errorf("a refused Merge changed the counts:\n%s\nwas\n%s", after, before)
			}
			if g := c.Snapshot().Gateways; g != 1 {
				t.Errorf("%d gateways after a refused Merge, want 1", g)
			}
		})
	}
}

// The JSON of Counts, the payload of the gateways' exchange: compact,
// steps without requests left out.
func TestCountsJSON(t *testing.T) {
	r := traffic.NewWithClock(newClock(at(7 * time.Second)).now)
	s := r.Series("b")
	s.Observe(at(time.Second), 200, time.Millisecond)
	s.Observe(at(2*time.Second), 503, 1500*time.Microsecond)
	s.Observe(at(6*time.Second), 404, 80*time.Microsecond)
	c := counts(t, r, []string{"b", "a"}, 20*time.Second, 5*time.Second)
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"now":"2026-03-01T12:00:07Z","window":20,"step":5,"functions":[{"name":"a"},` +
		`{"name":"b","steps":[{"t":1772366400,"e":1,"lo":1000,"hi":1500,"b":14,"h":[1,0,1]},` +
		`{"t":1772366405,"c":1,"lo":80,"hi":80,"b":3,"h":[1]}]}]}`
	if string(b) != want {
		t.Errorf("JSON\n%s\nwant\n%s", b, want)
	}
	if !reflect.DeepEqual(overTheWire(t, c).Snapshot(), c.Snapshot()) {
		t.Error("the counts decoded read other figures")
	}
	if c.Window() != 20*time.Second || c.Step() != 5*time.Second || !c.Now().Equal(at(7*time.Second)) || !slices.Equal(c.Functions(), []string{"a", "b"}) {
		t.Errorf("window %s, step %s, now %s, functions %v", c.Window(), c.Step(), c.Now(), c.Functions())
	}
}

// Counts from the network are checked: garbage is refused, never merged,
// and never panics.
func TestCountsJSONRefused(t *testing.T) {
	// A valid step of the window 12:00:00 to 12:00:05 (now 12:00:07).
	const step = `{"t":1772366405,"e":1,"c":1,"lo":80,"hi":150,"b":3,"h":[1,0,2]}`
	doc := func(fns string) string {
		return `{"now":"2026-03-01T12:00:07Z","window":20,"step":5,"functions":[` + fns + `]}`
	}
	withStep := func(s string) string { return doc(`{"name":"f","steps":[` + s + `]}`) }
	tests := []struct {
		name, json string
		ok         bool
	}{
		// The step's durations are 80µs (bucket 3: 78.1 to 97.7µs) and
		// two of 122 to 150µs (bucket 5: 122 to 153µs).
		{"valid", withStep(step), true},
		{"valid, no functions", doc(""), true},
		{"valid, a step of the earliest", withStep(`{"t":1772366390,"lo":1,"hi":1,"b":0,"h":[5]}`), true},
		{"valid, the overflow bucket", withStep(`{"t":1772366405,"lo":63800000,"hi":99999999,"b":64,"h":[5]}`), true},
		{"not an object", `[1,2]`, false},
		{"null", `null`, false},
		{"a string for a number", strings.Replace(withStep(step), `"window":20`, `"window":"20"`, 1), false},
		{"window too long", strings.Replace(doc(""), `"window":20`, `"window":1200`, 1), false},
		{"window that overflows", strings.Replace(doc(""), `"window":20`, `"window":18446744073`, 1), false},
		{"window not a multiple of step", strings.Replace(doc(""), `"window":20`, `"window":22`, 1), false},
		{"step zero", strings.Replace(doc(""), `"step":5`, `"step":0`, 1), false},
		{"step negative", strings.Replace(doc(""), `"step":5`, `"step":-5`, 1), false},
		{"no now", `{"window":20,"step":5,"functions":[]}`, false},
		{"now before 1970", strings.Replace(doc(""), `2026-03-01`, `1969-03-01`, 1), false},
		{"a function without a name", doc(`{"name":""}`), false},
		{"functions not sorted", doc(`{"name":"b"},{"name":"a"}`), false},
		{"a function twice", doc(`{"name":"a"},{"name":"a"}`), false},
		{"a step not aligned", withStep(`{"t":1772366406,"lo":1,"hi":1,"b":0,"h":[5]}`), false},
		{"a step after now", withStep(`{"t":1772366410,"lo":1,"hi":1,"b":0,"h":[5]}`), false},
		{"a step before the window", withStep(`{"t":1772366385,"lo":1,"hi":1,"b":0,"h":[5]}`), false},
		{"a step twice", withStep(step + "," + step), false},
		{"steps out of order", withStep(step + `,{"t":1772366400,"lo":1,"hi":1,"b":0,"h":[5]}`), false},
		{"a negative bucket", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":-1,"h":[5]}`), false},
		{"a bucket past the last", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":65,"h":[5]}`), false},
		{"buckets running past the last", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":63,"h":[5,1,1]}`), false},
		{"a huge bucket index", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":9223372036854775807,"h":[5]}`), false},
		{"no buckets", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[]}`), false},
		{"no histogram", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3}`), false},
		{"a leading empty bucket", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[0,5]}`), false},
		{"a trailing empty bucket", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[5,0]}`), false},
		{"a negative count", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[-5]}`), false},
		{"a fractional count", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[1.5]}`), false},
		{"too many requests", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[1099511627776]}`), false},
		{"counts that overflow", withStep(`{"t":1772366405,"lo":1,"hi":1,"b":3,"h":[18446744073709551615,2]}`), false},
		{"more errors than requests", withStep(`{"t":1772366405,"e":4,"lo":1,"hi":1,"b":3,"h":[3]}`), false},
		{"more client errors than requests", withStep(`{"t":1772366405,"c":4,"lo":1,"hi":1,"b":3,"h":[3]}`), false},
		{"errors and client errors over requests", withStep(`{"t":1772366405,"e":2,"c":2,"lo":1,"hi":1,"b":3,"h":[3]}`), false},
		{"errors that overflow with client errors", withStep(`{"t":1772366405,"e":18446744073709551615,"c":2,"lo":1,"hi":1,"b":3,"h":[3]}`), false},
		{"minimum over maximum", withStep(`{"t":1772366405,"lo":9,"hi":1,"b":3,"h":[3]}`), false},
		{"minimum under the first bucket", withStep(`{"t":1772366405,"lo":77,"hi":150,"b":3,"h":[1,0,2]}`), false},
		{"minimum over the first bucket", withStep(`{"t":1772366405,"lo":98,"hi":150,"b":3,"h":[1,0,2]}`), false},
		{"maximum under the last bucket", withStep(`{"t":1772366405,"lo":80,"hi":121,"b":3,"h":[1,0,2]}`), false},
		{"maximum over the last bucket", withStep(`{"t":1772366405,"lo":80,"hi":154,"b":3,"h":[1,0,2]}`), false},
		{"a minimum in the overflow bucket under its bound", withStep(`{"t":1772366405,"lo":1,"hi":99999999,"b":64,"h":[5]}`), false},
		{"a negative minimum", withStep(`{"t":1772366405,"lo":-1,"hi":1,"b":3,"h":[3]}`), false},
	}
	// What is not JSON at all is refused before its content is read.
	var c traffic.Counts
	if err := json.Unmarshal([]byte(`{"now":`), &c); err == nil {
		t.Error("decoded a truncated document")
	}
	mine := func() *traffic.Counts {
		r := traffic.NewWithClock(newClock(at(7 * time.Second)).now)
		r.Series("f").Observe(at(6*time.Second), 200, time.Millisecond)
		return counts(t, r, []string{"f"}, 20*time.Second, 5*time.Second)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c traffic.Counts
			err := json.Unmarshal([]byte(tt.json), &c)
			if !tt.ok {
				if !errors.Is(err, traffic.ErrBadCounts) {
					t.Fatalf("decoded %s: %v, want ErrBadCounts", tt.json, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decode %s: %v", tt.json, err)
			}
			m := mine()
			if err := m.Merge(&c); err != nil {
				t.Fatal(err)
			}
			if s := m.Snapshot(); s.Gateways != 2 {
				t.Errorf("%d gateways, want 2", s.Gateways)
			}
		})
	}
}

// FuzzCounts: whatever JSON arrives, decoding it either refuses it or
// gives counts that merge and read figures without panicking, with no
// more requests than their steps hold.
func FuzzCounts(f *testing.F) {
	r := traffic.NewWithClock(newClock(at(7 * time.Second)).now)
	for i := range 200 {
		r.Series(fmt.Sprint("f", i%3)).Observe(at(time.Duration(i)*37*time.Millisecond), 200+i%400, time.Duration(i*i)*time.Microsecond)
	}
	valid, err := json.Marshal(counts(f, r, []string{"f0", "f1", "f2"}, 20*time.Second, 5*time.Second))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"now":"2026-03-01T12:00:07Z","window":20,"step":5,"functions":[{"name":"f","steps":[{"t":1772366405,"lo":1,"hi":1,"b":64,"h":[5]}]}]}`))
	f.Add([]byte(`{"now":"2026-03-01T12:00:07Z","window":20,"step":5,"functions":[{"name":"f","steps":[{"t":1772366405,"lo":0,"hi":0,"b":1,"h":[5,3]}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c traffic.Counts
		if json.Unmarshal(data, &c) != nil {
			return
		}
		own := counts(t, r, []string{"f0"}, c.Window(), c.Step())
		if own.Merge(&c) != nil {
			t.Fatal("decoded counts of the same window do not merge")
		}
		snap := own.Snapshot()
		for _, fs := range snap.Functions {
			var sum uint64
			for _, p := range fs.Series {
				sum += p.Requests
				if p.P50 < 0 || p.P99 < p.P50 || p.ErrorRate > 1 {
					t.Fatalf("%s: figures %+v", fs.Name, p.Figures)
				}
			}
			if sum != fs.Total.Requests {
				t.Fatalf("%s: steps %d, total %d", fs.Name, sum, fs.Total.Requests)
			}
		}
	})
}
