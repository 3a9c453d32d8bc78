package traffic

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrMismatch means two Counts of different windows or steps were to be
// merged.
var ErrMismatch = errors.New("counts of another window")

// ErrBadCounts means the JSON of a Counts is malformed or breaks one of
// its rules; the error wrapping it says which.
var ErrBadCounts = errors.New("bad counts")

// maxStepRequests bounds the requests of one step of a decoded Counts: a
// recorder counts at most 60 one-second slots of 2^32-1 requests in a
// step, under 2^38. With each step under 2^40, a total over the 600 steps
// of the longest window stays under 2^50, and 2^14 Counts merge without
// a sum overflowing (the gateway merges at most 256).
const maxStepRequests = 1 << 40

// Counts are the raw counts behind a Snapshot: per function and per step,
// the requests by latency bucket, the errors and client errors, and the
// minimum and maximum duration. Unlike figures, counts add up: the Counts
// of several recorders (several gateways) over the same window Merge into
// the counts of all their requests, from which Snapshot reads the figures
// exactly as one recorder that had observed every request would.
//
// A Counts is built by Recorder.Counts, decoded from JSON (which checks
// every rule a recorder's counts follow, so that counts from the network
// can be merged safely) or merged; it is not changed otherwise. Its
// methods are not safe for concurrent use.
//
// Its JSON is compact: steps without requests are left out, and each
// step's histogram is given from its first bucket with requests to its
// last:
//
//	{"now":"2026-03-01T12:00:07Z","window":20,"step":5,"functions":[
//	  {"name":"a"},
//	  {"name":"b","steps":[{"t":1772366400,"e":1,"lo":1000,"hi":1500,"b":14,"h":[1,0,1]},
//	                       {"t":1772366405,"c":1,"lo":80,"hi":80,"b":3,"h":[1]}]}]}
//
// where t is the step's start in Unix seconds, e its errors, c its client
// errors (both left out when 0), lo and hi the minimum and maximum
// duration in microseconds, b the first bucket and h the requests of
// buckets b, b+1, ... (bucket 0 is under FirstBound, bucket i from 1 to 63
// holds [FirstBound×BucketRatio^(i-1), FirstBound×BucketRatio^i), each
// bound rounded to the nanosecond, and bucket 64 the rest).
type Counts struct {
	now          time.Time
	window, step int64 // seconds
	// gateways is how many recorders' counts are merged in.
	gateways  int
	functions []functionCounts // sorted by name, each name once
}

// functionCounts are one function's counts, under the names of its JSON.
type functionCounts struct {
	Name  string       `json:"name"`
	Steps []stepCounts `json:"steps,omitempty"` // by start, increasing; only steps with requests
}

// stepCounts are the counts of one step, at least one request, under the
// names of their JSON.
type stepCounts struct {
	Start        int64  `json:"t"` // Unix seconds, a multiple of the step
	Errors       uint64 `json:"e,omitempty"`
	ClientErrors uint64 `json:"c,omitempty"`
	MinMicros    uint32 `json:"lo"`
	MaxMicros    uint32 `json:"hi"`
	// First is the bucket of Buckets[0]; the first and last of Buckets
	// are not 0.
	First   int     `json:"b"`
	Buckets buckets `json:"h"`
}

// buckets are requests by latency bucket, from a step's first bucket on.
// Their JSON is an array of whole numbers; they decode it themselves, as
// they are most of the numbers of a Counts and encoding/json takes several
// times longer to decode each by reflection.
type buckets []uint64

// UnmarshalJSON decodes an array of whole numbers, each up to 2^64-1.
// encoding/json has checked that data is one valid JSON value.
func (b *buckets) UnmarshalJSON(data []byte) error {
	if len(data) < 2 || data[0] != '[' {
		return errors.New("the buckets are not an array")
	}
	out := make([]uint64, 0, bytes.Count(data, []byte{','})+1)
	var n uint64
	digits := 0
	for _, ch := range data[1:] {
		switch {
		case ch >= '0' && ch <= '9':
			if n > (math.MaxUint64-uint64(ch-'0'))/10 {
				return errors.New("a bucket is over 2^64-1")
			}
			n = n*10 + uint64(ch-'0')
			digits++
		case ch == ',' || ch == ']':
			if digits == 0 {
				if ch == ']' && len(out) == 0 {
					break // []
				}
				return errors.New("a bucket is not a whole number")
			}
			out = append(out, n)
			n, digits = 0, 0
		case ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n':
			// between tokens: a valid value has no space inside a number
		default:
			return fmt.Errorf("a bucket is not a whole number (%q)", ch)
		}
	}
	*b = out
	return nil
}

// frame is where the steps of a window ending now lie.
type frame struct {
	nowSec, stepSec int64
	points          int
	// first and last are the starts of the first and last step.
	first, last int64
	// partial is the seconds the last step has run, elapsed those since
	// the first step started, each at least 1 (for rates).
	partial, elapsed float64
}

// frameOf returns the frame of a window and a step, in seconds, ending
// at now.
func frameOf(now time.Time, window, step int64) frame {
	nowSec := now.Unix()
	f := frame{nowSec: nowSec, stepSec: step, points: int(window / step)}
	f.last = nowSec - mod(nowSec, step)
	f.first = f.last - int64(f.points-1)*step
	f.partial = max(now.Sub(time.Unix(f.last, 0)).Seconds(), 1)
	f.elapsed = max(now.Sub(time.Unix(f.first, 0)).Seconds(), 1)
	return f
}

// holds reports whether the step starting at start is one of the frame's.
func (f *frame) holds(start int64) bool {
	return start >= f.first && start <= f.last && mod(start, f.stepSec) == 0
}

// Counts returns the counts of the functions named (each once, sorted by
// name, without steps for those without a series; it makes none) over
// the window ending now, in steps: what Snapshot reads its figures from,
// with the same rules on window and step (else the error wraps
// ErrBadWindow).
func (r *Recorder) Counts(functions []string, window, step time.Duration) (*Counts, error) {
	if err := CheckWindow(window, step); err != nil {
		return nil, err
	}
	now := r.now()
	c := &Counts{
		now:      now,
		window:   int64(window / time.Second),
		step:     int64(step / time.Second),
		gateways: 1,
	}
	f := frameOf(now, c.window, c.step)
	names := slices.Clone(functions)
	slices.Sort(names)
	names = slices.Compact(names)
	series := r.lookup(names)
	c.functions = make([]functionCounts, len(names))
	// The steps' buckets share arrays of arenaChunk.
	var arena []uint64
	for i, name := range names {
		c.functions[i].Name = name
		s := series[i]
		if s == nil {
			continue
		}
		var steps []stepCounts
		for p := range f.points {
			start := f.first + int64(p)*f.stepSec
			var h hist
			s.merge(&h, start, min(start+f.stepSec, f.nowSec+1))
			if h.requests > 0 {
				if steps == nil {
					steps = make([]stepCounts, 0, f.points-p)
				}
				var sc stepCounts
				sc, arena = h.stepCounts(start, arena)
				steps = append(steps, sc)
			}
		}
		c.functions[i].Steps = steps
		s.releaseIdle(f.nowSec)
	}
	return c, nil
}

// arenaChunk is the number of buckets Recorder.Counts allocates at once
// for the steps' histograms (16 KiB): a step holds at most numBuckets.
const arenaChunk = 2048

// stepCounts returns the counts of h, not empty, as those of the step
// starting at start, its buckets appended to arena.
func (h *hist) stepCounts(start int64, arena []uint64) (stepCounts, []uint64) {
	lo, hi := 0, numBuckets-1
	for h.counts[lo] == 0 {
		lo++
	}
	for h.counts[hi] == 0 {
		hi--
	}
	if cap(arena)-len(arena) < hi+1-lo {
		// A new chunk: those before stay with the steps that use them,
		// so none is copied.
		arena = make([]uint64, 0, arenaChunk)
	}
	n := len(arena)
	arena = append(arena, h.counts[lo:hi+1]...)
	return stepCounts{
		Start:        start,
		Errors:       h.errors,
		ClientErrors: h.clientErrors,
		MinMicros:    h.minMicros,
		MaxMicros:    h.maxMicros,
		First:        lo,
		Buckets:      arena[n:len(arena):len(arena)],
	}, arena
}

// addTo adds the step's counts to h.
func (sc *stepCounts) addTo(h *hist) {
	for i, n := range sc.Buckets {
		h.counts[sc.First+i] += n
		h.requests += n
	}
	h.addRange(sc.MinMicros, sc.MaxMicros)
	h.errors += sc.Errors
	h.clientErrors += sc.ClientErrors
}

// plus returns the counts of two steps of the same start.
func (sc *stepCounts) plus(o *stepCounts) stepCounts {
	first := min(sc.First, o.First)
	end := max(sc.First+len(sc.Buckets), o.First+len(o.Buckets))
	b := make([]uint64, end-first)
	for i, n := range sc.Buckets {
		b[sc.First-first+i] += n
	}
	for i, n := range o.Buckets {
		b[o.First-first+i] += n
	}
	return stepCounts{
		Start:        sc.Start,
		Errors:       sc.Errors + o.Errors,
		ClientErrors: sc.ClientErrors + o.ClientErrors,
		MinMicros:    min(sc.MinMicros, o.MinMicros),
		MaxMicros:    max(sc.MaxMicros, o.MaxMicros),
		First:        first,
		Buckets:      b,
	}
}

// Window returns the counts' window.
func (c *Counts) Window() time.Duration { return time.Duration(c.window) * time.Second }

// Step returns the counts' step.
func (c *Counts) Step() time.Duration { return time.Duration(c.step) * time.Second }

// Now returns the end of the counts' window: the clock's time when the
// recorder read them, or, merged, that of the Counts merged into.
func (c *Counts) Now() time.Time { return c.now }

// Functions returns the names of the functions counted, sorted.
func (c *Counts) Functions() []string {
	names := make([]string, len(c.functions))
	for i := range c.functions {
		names[i] = c.functions[i].Name
	}
	return names
}

// Merge adds the counts of o to c: c then counts the requests of both,
// for the functions of either, and the recorders of both. Both must have
// the same window and step (else the error wraps ErrMismatch and c is
// unchanged). Steps are matched by their start, so that recorders whose
// clocks differ a little merge; the window stays c's, and the steps of o
// outside it (a recorder whose clock is ahead already counting the next
// step) are left out. c may share memory with o afterwards; neither
// changes.
func (c *Counts) Merge(o *Counts) error {
	if c.window != o.window || c.step != o.step {
		return fmt.Errorf("%w: a window of %ds in steps of %ds cannot merge with one of %ds in steps of %ds",
			ErrMismatch, o.window, o.step, c.window, c.step)
	}
	f := frameOf(c.now, c.window, c.step)
	out := make([]functionCounts, 0, max(len(c.functions), len(o.functions)))
	a, b := c.functions, o.functions
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || len(a) > 0 && a[0].Name < b[0].Name:
			out = append(out, a[0])
			a = a[1:]
		case len(a) == 0 || b[0].Name < a[0].Name:
			out = append(out, functionCounts{Name: b[0].Name, Steps: mergeSteps(nil, b[0].Steps, &f)})
			b = b[1:]
		default:
			out = append(out, functionCounts{Name: a[0].Name, Steps: mergeSteps(a[0].Steps, b[0].Steps, &f)})
			a, b = a[1:], b[1:]
		}
	}
	c.functions = out
	c.gateways += o.gateways
	return nil
}

// mergeSteps returns the steps of a, all in f, and those of b in f, by
// start; a step of both is their sum.
func mergeSteps(a, b []stepCounts, f *frame) []stepCounts {
	out := make([]stepCounts, 0, max(len(a), len(b)))
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || len(a) > 0 && a[0].Start < b[0].Start:
			out = append(out, a[0])
			a = a[1:]
		case len(a) == 0 || b[0].Start < a[0].Start:
			if f.holds(b[0].Start) {
				out = append(out, b[0])
			}
			b = b[1:]
		default:
			out = append(out, a[0].plus(&b[0]))
			a, b = a[1:], b[1:]
		}
	}
	return out
}

// Snapshot returns the figures of the counts, as Recorder.Snapshot
// describes them, with Gateways set to the number of recorders merged.
func (c *Counts) Snapshot() *Snapshot {
	f := frameOf(c.now, c.window, c.step)
	snap := &Snapshot{
		Now:       c.now.UTC(),
		Window:    int(c.window),
		Step:      int(c.step),
		Gateways:  c.gateways,
		Functions: make([]FunctionStats, len(c.functions)),
	}
	for i := range c.functions {
		fc := &c.functions[i]
		fs := FunctionStats{Name: fc.Name, Series: make([]Point, f.points)}
		steps := fc.Steps
		var total hist
		for p := range f.points {
			start := f.first + int64(p)*f.stepSec
			var h hist
			for len(steps) > 0 && steps[0].Start < start {
				steps = steps[1:] // not reached: every step is in the window
			}
			if len(steps) > 0 && steps[0].Start == start {
				steps[0].addTo(&h)
				steps = steps[1:]
			}
			seconds := float64(f.stepSec)
			if p == f.points-1 {
				seconds = f.partial
			}
			fs.Series[p] = Point{Time: time.Unix(start, 0).UTC(), Figures: h.figures(seconds)}
			total.add(&h)
		}
		fs.Total = total.figures(f.elapsed)
		snap.Functions[i] = fs
	}
	return snap
}

// countsJSON is the JSON of a Counts.
type countsJSON struct {
	Now       time.Time        `json:"now"`
	Window    int64            `json:"window"`
	Step      int64            `json:"step"`
	Functions []functionCounts `json:"functions"`
}

// MarshalJSON encodes the counts as the type's doc shows. It appends
// the numbers itself: a gateway encodes its counts for every other
// gateway's GET /system/stats.
func (c *Counts) MarshalJSON() ([]byte, error) {
	now, err := c.now.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("counts: %w", err)
	}
	size := 64
	for i := range c.functions {
		size += 32 + len(c.functions[i].Name) + 64*len(c.functions[i].Steps)
		for k := range c.functions[i].Steps {
			size += 4 * len(c.functions[i].Steps[k].Buckets)
		}
	}
	out := make([]byte, 0, size)
	out = append(out, `{"now":`...)
	out = append(out, now...)
	out = append(out, `,"window":`...)
	out = strconv.AppendInt(out, c.window, 10)
	out = append(out, `,"step":`...)
	out = strconv.AppendInt(out, c.step, 10)
	out = append(out, `,"functions":[`...)
	for i := range c.functions {
		fc := &c.functions[i]
		if i > 0 {
			out = append(out, ',')
		}
		name, err := json.Marshal(fc.Name)
		if err != nil {
			return nil, fmt.Errorf("counts: %w", err)
		}
		out = append(out, `{"name":`...)
		out = append(out, name...)
		if len(fc.Steps) > 0 {
			out = append(out, `,"steps":[`...)
			for k := range fc.Steps {
				if k > 0 {
					out = append(out, ',')
				}
				out = fc.Steps[k].appendJSON(out)
			}
			out = append(out, ']')
		}
		out = append(out, '}')
	}
	return append(out, "]}"...), nil
}

// appendJSON appends the step's JSON to out.
func (sc *stepCounts) appendJSON(out []byte) []byte {
	out = append(out, `{"t":`...)
	out = strconv.AppendInt(out, sc.Start, 10)
	if sc.Errors > 0 {
		out = append(out, `,"e":`...)
		out = strconv.AppendUint(out, sc.Errors, 10)
	}
	if sc.ClientErrors > 0 {
		out = append(out, `,"c":`...)
		out = strconv.AppendUint(out, sc.ClientErrors, 10)
	}
	out = append(out, `,"lo":`...)
	out = strconv.AppendUint(out, uint64(sc.MinMicros), 10)
	out = append(out, `,"hi":`...)
	out = strconv.AppendUint(out, uint64(sc.MaxMicros), 10)
	out = append(out, `,"b":`...)
	out = strconv.AppendInt(out, int64(sc.First), 10)
	out = append(out, `,"h":[`...)
	for i, n := range sc.Buckets {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, n, 10)
	}
	return append(out, "]}"...)
}

// UnmarshalJSON decodes counts encoded by MarshalJSON, of one recorder,
// and checks every rule of a recorder's counts: window and step in
// bounds, functions named, sorted and each once, each step in the window
// ending now, aligned, listed once, in order, with requests (under 2^40),
// its errors and client errors not more than its requests, its buckets
// in range, its minimum in its first bucket and its maximum in its last. Counts that break one
// are refused with an error wrapping ErrBadCounts, and c is unchanged.
func (c *Counts) UnmarshalJSON(data []byte) error {
	var j countsJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("%w: %w", ErrBadCounts, err)
	}
	if err := j.check(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadCounts, err)
	}
	*c = Counts{now: j.Now, window: j.Window, step: j.Step, gateways: 1, functions: j.Functions}
	return nil
}

// check checks the rules UnmarshalJSON lists.
func (j *countsJSON) check() error {
	// Bounds first: the conversions to durations must not overflow.
	if j.Window < 1 || j.Window > int64(MaxWindow/time.Second) || j.Step < 1 || j.Step > int64(MaxStep/time.Second) {
		return fmt.Errorf("window %d and step %d are out of range", j.Window, j.Step)
	}
	if err := CheckWindow(time.Duration(j.Window)*time.Second, time.Duration(j.Step)*time.Second); err != nil {
		return err
	}
	if sec := j.Now.Unix(); sec <= 0 || sec > math.MaxUint32 {
		return fmt.Errorf("now %s is out of range", j.Now)
	}
	f := frameOf(j.Now, j.Window, j.Step)
	for i := range j.Functions {
		fc := &j.Functions[i]
		if fc.Name == "" {
			return fmt.Errorf("function %d has no name", i)
		}
		if i > 0 && strings.Compare(j.Functions[i-1].Name, fc.Name) >= 0 {
			return fmt.Errorf("function %q is not after %q: functions are sorted and listed once", fc.Name, j.Functions[i-1].Name)
		}
		for k := range fc.Steps {
			sc := &fc.Steps[k]
			if err := sc.check(&f); err != nil {
				return fmt.Errorf("function %q, step %d: %w", fc.Name, k, err)
			}
			if k > 0 && fc.Steps[k-1].Start >= sc.Start {
				return fmt.Errorf("function %q: step %d starts at %d, not after step %d: steps are in order and listed once", fc.Name, k, sc.Start, k-1)
			}
		}
	}
	return nil
}

// check checks a step of a decoded Counts in frame f.
func (sc *stepCounts) check(f *frame) error {
	if !f.holds(sc.Start) {
		return fmt.Errorf("start %d is not the start of a step of the window %d to %d in steps of %d", sc.Start, f.first, f.last, f.stepSec)
	}
	if sc.First < 0 || sc.First >= numBuckets || len(sc.Buckets) == 0 || len(sc.Buckets) > numBuckets-sc.First {
		return fmt.Errorf("buckets %d to %d are out of range 0 to %d", sc.First, sc.First+len(sc.Buckets)-1, numBuckets-1)
	}
	if sc.Buckets[0] == 0 || sc.Buckets[len(sc.Buckets)-1] == 0 {
		return errors.New("the histogram starts or ends with an empty bucket")
	}
	var requests uint64
	for _, n := range sc.Buckets {
		if n >= maxStepRequests-requests {
			return fmt.Errorf("more than %d requests", uint64(maxStepRequests))
		}
		requests += n
	}
	if sc.Errors > requests || sc.ClientErrors > requests-sc.Errors {
		return fmt.Errorf("%d errors and %d client errors out of %d requests", sc.Errors, sc.ClientErrors, requests)
	}
	if sc.MinMicros > sc.MaxMicros {
		return fmt.Errorf("minimum %dµs over maximum %dµs", sc.MinMicros, sc.MaxMicros)
	}
	// The minimum lies in the first bucket and the maximum in the last,
	// rounded down and up to the µs, as a recorder's do: percentiles are
	// read inside buckets narrowed to them.
	lo, hi := int64(sc.MinMicros)*1e3, int64(sc.MaxMicros)*1e3
	first, last := sc.First, sc.First+len(sc.Buckets)-1
	if first < numBounds && lo >= bound[first] || first > 0 && lo+1e3 <= bound[first-1] {
		return fmt.Errorf("minimum %dµs is not in the first bucket, %d", sc.MinMicros, first)
	}
	if last < numBounds && hi-1e3 >= bound[last] || last > 0 && hi < bound[last-1] {
		return fmt.Errorf("maximum %dµs is not in the last bucket, %d", sc.MaxMicros, last)
	}
	return nil
}
