// Package promtest reads Prometheus metrics in tests: a scrape of a
// /metrics endpoint or a registry's gathering, by family name, and the
// value of one series in it.
package promtest

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are metric families by name.
type Families map[string]*dto.MetricFamily

// Scrape GETs url, a /metrics endpoint, and parses the text exposition as
// Prometheus would; it fails t on any error.
func Scrape(t testing.TB, url string) Families {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return mfs
}

// Gather gathers g, failing t on any inconsistency it reports.
func Gather(t testing.TB, g prometheus.Gatherer) Families {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := Families{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// Label returns the value of m's label name, "" if it has none.
func Label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// hasExactly reports whether m has exactly the labels ls (name, value,
// ...).
func hasExactly(m *dto.Metric, ls []string) bool {
	if len(m.GetLabel())*2 != len(ls) {
		return false
	}
	for i := 0; i+1 < len(ls); i += 2 {
		if Label(m, ls[i]) != ls[i+1] {
			return false
		}
	}
	return true
}

// Value returns the value of the series name{labels} (labels: name,
// value, ..., all of the series' labels): a counter's or gauge's value, a
// histogram's count. ok is false when there is no such series.
func (f Families) Value(name string, labels ...string) (v float64, ok bool) {
	for _, m := range f[name].GetMetric() {
		if !hasExactly(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// Want fails t unless the series name{labels} exists with value v.
func (f Families) Want(t testing.TB, v float64, name string, labels ...string) {
	t.Helper()
	got, ok := f.Value(name, labels...)
	switch {
	case !ok:
		t.Errorf("%s%v: no such series", name, labels)
	case got != v:
		t.Errorf("%s%v = %v, want %v", name, labels, got, v)
	}
}
