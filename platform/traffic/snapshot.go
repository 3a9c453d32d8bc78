package traffic

import (
	"errors"
	"fmt"
	"time"
)

// Bounds of a Snapshot's window and step.
const (
	MinWindow = 10 * time.Second
	MinStep   = time.Second
	MaxStep   = time.Minute
)

// ErrBadWindow means a Snapshot's window or step is out of bounds; the
// error wrapping it says which and why (the gateway answers 400).
var ErrBadWindow = errors.New("bad stats window")

// Snapshot is the figures of some functions over a window ending now.
type Snapshot struct {
	// Now is the clock's time of the snapshot, the end of the window.
	Now time.Time `json:"now"`
	// Window and Step are in seconds.
	Window int `json:"window"`
	Step   int `json:"step"`
	// Gateways is how many recorders' counts the figures merge (see
	// Counts.Merge): 1 for one gateway's own.
	Gateways int `json:"gateways"`
	// Partial is set by a caller that merged the counts of several
	// recorders when some could not be had: the figures are those of
	// Gateways recorders only. A Snapshot of Recorder.Snapshot is never
	// partial.
	Partial bool `json:"partial"`
	// Functions are sorted by name.
	Functions []FunctionStats `json:"functions"`
}

// FunctionStats is one function's figures over the window.
type FunctionStats struct {
	Name string `json:"name"`
	// Total covers the whole window: from the first point's start to Now.
	Total Figures `json:"total"`
	// Series holds Window/Step points, oldest first; the last is the step
	// that contains Now, still in progress.
	Series []Point `json:"series"`
}

// Figures are the requests answered over a period.
//
// The percentiles are read from the period's latency histogram, whose
// buckets span a factor BucketRatio each: the true value lies in the
// bucket read, so the two differ by less than 25% in the worst case
// (durations piled at one edge of a bucket), and by less than 11.8%
// (the square root of BucketRatio) when that bucket holds one request.
// Latencies that spread over several buckets, as real ones do, read
// within about 1% (uniform, exponential and log-normal ones in the tests,
// held to 12%); equal durations, and the first and last rank, exactly.
// Under FirstBound and over the last bound (about 63.5s) only the minimum
// and maximum observed bound them.
type Figures struct {
	Requests     uint64 `json:"requests"`
	Errors       uint64 `json:"errors"`        // status >= 500
	ClientErrors uint64 `json:"client_errors"` // 400..499 (499 = client went away)
	// Rate is requests per second: over Step seconds for a point, over
	// the seconds elapsed (at least 1) for the point in progress and for
	// Total.
	Rate float64 `json:"rate"`
	// ErrorRate is Errors/Requests, 0 with no requests.
	ErrorRate float64 `json:"error_rate"`
	// P50 and P99 are latency percentiles in milliseconds, to the
	// microsecond; 0 with no requests.
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
}

// Point is one step of a series.
type Point struct {
	Time time.Time `json:"t"` // start of the step, UTC
	Figures
}

// Snapshot returns the figures of the functions named (each once, sorted
// by name, zeros for those without a series; it makes none) over the
// window ending now, in steps. window and step are whole seconds, MinStep
// <= step <= MaxStep and MinWindow <= window <= MaxWindow, window a
// multiple of step; else the error wraps ErrBadWindow.
//
// Steps are aligned on multiples of step since the Unix epoch, so that
// successive snapshots chart the same points: the first of the
// window/step points starts window-step seconds before the step that
// contains now, and Total covers between window-step and window seconds.
func (r *Recorder) Snapshot(functions []string, window, step time.Duration) (*Snapshot, error) {
	c, err := r.Counts(functions, window, step)
	if err != nil {
		return nil, err
	}
	return c.Snapshot(), nil
}

// CheckWindow returns an error wrapping ErrBadWindow if window or step is
// out of the bounds Snapshot and Counts take, nil otherwise.
func CheckWindow(window, step time.Duration) error {
	switch {
	case step%time.Second != 0 || window%time.Second != 0:
		return fmt.Errorf("%w: window %s and step %s must be whole seconds", ErrBadWindow, window, step)
	case step < MinStep || step > MaxStep:
		return fmt.Errorf("%w: step %s is out of range; expected %s to %s", ErrBadWindow, step, MinStep, MaxStep)
	case window < MinWindow || window > MaxWindow:
		return fmt.Errorf("%w: window %s is out of range; expected %s to %s", ErrBadWindow, window, MinWindow, MaxWindow)
	case window%step != 0:
		return fmt.Errorf("%w: window %s is not a multiple of step %s", ErrBadWindow, window, step)
	}
	return nil
}

// mod is a modulo b, in [0, b) for negative a too.
func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}
