package main

import (
	"bytes"
	"cmp"
	"encoding/xml"
	"fmt"
	"math"
	"slices"
	"strings"
)

// The --chart SVG: two panels of horizontal bars, throughput (req/s) and
// latency (p50 and p99), one row per configuration; Shoal's in blue, the
// references in grey. Written by hand; every text goes through
// xml.EscapeText.

// Chart geometry, in SVG user units.
const (
	chartWidth  = 960
	chartLeft   = 200 // bars start here; labels end before it
	chartBarMax = 600 // longest bar
	chartRow    = 34  // height of one configuration's row
	chartTitleH = 64
	chartPanelH = 40 // a panel's heading
)

// Chart colours.
const (
	colorShoal    = "#2563eb"
	colorShoalP50 = "#93c5fd"
	colorRef      = "#6b7280"
	colorRefP50   = "#d1d5db"
	colorText     = "#111827"
	colorMuted    = "#6b7280"
	colorGrid     = "#e5e7eb"
)

// isShoal reports whether a configuration measures Shoal itself.
func isShoal(name string) bool {
	return name == cfgGateway || name == cfgGatewayAuth || name == cfgShoalNATS
}

// esc escapes s for SVG text.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// chartSVG draws the report's throughput and latency.
func (r *BenchReport) chartSVG() []byte {
	rows := r.Results
	panel := chartPanelH + len(rows)*chartRow + 16
	height := chartTitleH + 2*panel + 40
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="13">`+"\n",
		chartWidth, height, chartWidth, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", chartWidth, height)
	m := r.Machine
	st := r.Settings
	warmup := seconds(st.WarmupSeconds).String()
	if st.NodeWarmupSeconds > st.WarmupSeconds && r.result(cfgNode).ran {
		warmup += " (node " + seconds(st.NodeWarmupSeconds).String() + ")"
	}
	title := fmt.Sprintf("shoal bench: GET -> pong!, %d connections, %s measured after %s warm-up", st.Connections, seconds(st.DurationSeconds), warmup)
	sub := fmt.Sprintf("%s, %d cores, %s %s/%s, %s", m.CPUModel, m.Cores, m.GoVersion, m.OS, m.Arch, r.Started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, `<text x="20" y="28" font-size="17" font-weight="bold" fill="%s">%s</text>`+"\n", colorText, esc(title))
	fmt.Fprintf(&b, `<text x="20" y="48" fill="%s">%s</text>`+"\n", colorMuted, esc(sub))

	// Throughput.
	y := chartTitleH
	maxRPS := 0.0
	for _, x := range rows {
		maxRPS = math.Max(maxRPS, x.RPS)
	}
	maxRPS = r.chartHeading(&b, y, "Throughput: requests per second (higher is better)", maxRPS, func(v float64) string { return thousands(v) })
	y += chartPanelH
	// The throughput targets of gateway-auth, where their reference ran.
	var targets []chartMark
	if x := r.result(cfgNode); x.ran {
		targets = append(targets, chartMark{3 * x.RPS, "target 3x node"})
	}
	if x := r.result(cfgGoHTTP); x.ran {
		targets = append(targets, chartMark{0.5 * x.RPS, "target 0.5x go-http"})
	}
	r.chartTargets(&b, y, targets, maxRPS)
	for _, x := range rows {
		r.chartLabel(&b, y, x)
		if x.ran {
			w := scale(x.RPS, maxRPS)
			fill := colorRef
			if isShoal(x.Name) {
				fill = colorShoal
			}
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="18" fill="%s"><title>%s</title></rect>`+"\n",
				chartLeft, y+7, w, fill, esc(x.Name+": "+thousands(x.RPS)+" req/s"))
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="%s">%s req/s%s</text>`+"\n", float64(chartLeft)+w+6, y+21, colorText, esc(thousands(x.RPS)), esc(errorNote(x)))
		}
		y += chartRow
	}

	// Latency.
	y += 16
	maxLat := 0.0
	for _, x := range rows {
		maxLat = math.Max(maxLat, x.Latency.P99)
	}
	maxLat = r.chartHeading(&b, y, "Latency: p50 (light) and p99 (dark), milliseconds (lower is better)", maxLat, func(v float64) string { return fmtMS(v) })
	y += chartPanelH
	r.chartTargets(&b, y, []chartMark{{5, "p99 target 5ms"}}, maxLat)
	for _, x := range rows {
		r.chartLabel(&b, y, x)
		if x.ran {
			p50, p99 := colorRefP50, colorRef
			if isShoal(x.Name) {
				p50, p99 = colorShoalP50, colorShoal
			}
			for i, bar := range []struct {
				v     float64
				fill  string
				label string
			}{{x.Latency.P50, p50, "p50"}, {x.Latency.P99, p99, "p99"}} {
				w := scale(bar.v, maxLat)
				top := y + 5 + i*13
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="11" fill="%s"><title>%s</title></rect>`+"\n",
					chartLeft, top, w, bar.fill, esc(x.Name+" "+bar.label+": "+fmtMS(bar.v)))
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="11" fill="%s">%s %s</text>`+"\n",
					float64(chartLeft)+w+6, top+10, colorText, bar.label, esc(fmtMS(bar.v)))
			}
		}
		y += chartRow
	}
	fmt.Fprintf(&b, `<text x="20" y="%d" font-size="11" fill="%s">%s</text>`+"\n", height-16, colorMuted,
		esc("Blue: Shoal. Grey: references. Closed-loop load from the same machine; compare ratios, not absolute figures. docs/benchmarks.md"))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// chartHeading draws a panel's heading and its vertical grid, at round
// steps up to at least maxV; it returns the axis' end, the value of the
// longest bar.
func (r *BenchReport) chartHeading(b *bytes.Buffer, y int, heading string, maxV float64, format func(float64) string) float64 {
	fmt.Fprintf(b, `<text x="20" y="%d" font-size="14" font-weight="bold" fill="%s">%s</text>`+"\n", y+22, colorText, esc(heading))
	rows := len(r.Results)
	if maxV <= 0 {
		return maxV
	}
	step := niceStep(maxV / 5)
	ticks := int(math.Ceil(maxV/step - 1e-9))
	end := step * float64(ticks)
	for i := 0; i <= ticks; i++ {
		x := float64(chartLeft) + float64(chartBarMax)*float64(i)/float64(ticks)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>`+"\n", x, y+chartPanelH, x, y+chartPanelH+rows*chartRow, colorGrid)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" font-size="10" text-anchor="middle" fill="%s">%s</text>`+"\n", x, y+chartPanelH+rows*chartRow+12, colorMuted, esc(format(step*float64(i))))
	}
	return end
}

// niceStep rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceStep(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// chartMark is a labelled value on an axis.
type chartMark struct {
	v     float64
	label string
}

// chartTargets draws dashed vertical lines at target values, under the
// bars drawn next, labelled just above the first row; two labels close
// together are set apart to the left and the right of their lines.
func (r *BenchReport) chartTargets(b *bytes.Buffer, y int, marks []chartMark, axisEnd float64) {
	if axisEnd <= 0 {
		return
	}
	marks = slices.DeleteFunc(slices.Clone(marks), func(m chartMark) bool { return m.v <= 0 || m.v > axisEnd })
	slices.SortFunc(marks, func(a, b chartMark) int { return cmp.Compare(a.v, b.v) })
	xs := make([]float64, len(marks))
	for i, m := range marks {
		xs[i] = float64(chartLeft) + m.v/axisEnd*chartBarMax
	}
	bottom := y + len(r.Results)*chartRow
	for i, m := range marks {
		anchor, lx := "middle", xs[i]
		switch {
		case i+1 < len(xs) && xs[i+1]-xs[i] < 140:
			anchor, lx = "end", xs[i]-3
		case i > 0 && xs[i]-xs[i-1] < 140:
			anchor, lx = "start", xs[i]+3
		}
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ef4444" stroke-opacity="0.7" stroke-dasharray="5,4"/>`+"\n", xs[i], y, xs[i], bottom)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" font-size="10" text-anchor="%s" fill="#dc2626">%s</text>`+"\n", lx, y-3, anchor, esc(m.label))
	}
}

// chartLabel draws a configuration's name, and "skipped" for one that
// did not run.
func (r *BenchReport) chartLabel(b *bytes.Buffer, y int, x *BenchResult) {
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end" fill="%s">%s</text>`+"\n", chartLeft-10, y+21, colorText, esc(x.Name))
	if !x.ran {
		fmt.Fprintf(b, `<text x="%d" y="%d" font-style="italic" fill="%s">%s</text>`+"\n", chartLeft+6, y+21, colorMuted, esc(shorten("skipped: "+x.Skipped, 90)))
	}
}

// shorten cuts s to n runes at most.
func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

// scale is v's bar length against the largest value.
func scale(v, maxV float64) float64 {
	if maxV <= 0 || v <= 0 {
		return 0
	}
	return math.Max(1, v/maxV*chartBarMax)
}

func errorNote(x *BenchResult) string {
	if x.ErrorsTotal == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d errors)", x.ErrorsTotal)
}
