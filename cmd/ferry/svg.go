package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"strings"

	"opendev.org/x/ferry/pkg/status"
)

// The picture of a migration (`ferry migration show … --svg FILE`): memory
// remaining and bandwidth over time, the max downtime below them, ferry's
// actions marked at their recorded times, and the physics beside the
// actual — the first pass at the measured bandwidth, which is when a guest
// that did not write would have finished.

const (
	svgW, svgH     = 860, 420
	padL, padR     = 70, 80
	topY, topH     = 50, 230 // memory and bandwidth
	lowY, lowH     = 310, 70 // max downtime
	plotW          = svgW - padL - padR
	memColour      = "#1f6fb4"
	bpsColour      = "#e08214"
	downColour     = "#2c8c3c"
	predictColour  = "#888888"
	actionColour   = "#b2182b"
	gridColour     = "#dddddd"
	labelFontSize  = 11
	legendFontSize = 12
)

// renderSVG draws v's series; v must carry ferry's record with a series.
func renderSVG(v migrationView) ([]byte, error) {
	if v.Ferry == nil || len(v.Ferry.Series) == 0 {
		why := v.FerryNote
		if v.Ferry != nil {
			why = "ferry's record of it has no series (it ended before its first sample, or its ferryd predates series)"
		}
		return nil, fmt.Errorf("migration %d: nothing to draw: %s", v.ID, why)
	}
	fm := v.Ferry
	pts := fm.Series
	tEnd := pts[len(pts)-1].AtSeconds
	tEnd = math.Max(tEnd, fm.Record.TotalSeconds)
	for _, a := range fm.Actions {
		tEnd = math.Max(tEnd, a.AtSeconds)
	}
	var memMax, bpsMax, downMax float64
	for _, p := range pts {
		memMax = math.Max(memMax, mibf(p.MemoryRemaining))
		bpsMax = math.Max(bpsMax, mibf(p.Bps))
		downMax = math.Max(downMax, p.MaxDowntimeSeconds*1000)
	}
	first := mibf(pts[0].MemoryRemaining)
	predictEnd := 0.0
	if b := fm.Record.BandwidthBps; b > 0 && fm.Record.FirstPassBytes > 0 {
		predictEnd = pts[0].AtSeconds + mibf(pts[0].MemoryRemaining)/(b/(1<<20))
	}
	tEnd = niceCeil(math.Max(tEnd, predictEnd))
	memMax, bpsMax, downMax = niceCeil(math.Max(memMax, first)), niceCeil(bpsMax), niceCeil(downMax)

	x := func(t float64) float64 { return padL + t/tEnd*plotW }
	yMem := func(m float64) float64 { return topY + topH - m/memMax*topH }
	yBps := func(b float64) float64 { return topY + topH - b/bpsMax*topH }
	yDown := func(d float64) float64 { return lowY + lowH - d/downMax*lowH }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	name := fmt.Sprint(v.ID)
	if v.ID == 0 { // from a journal: Nova's id is not in it
		name, _, _ = strings.Cut(v.UUID, "-")
	}
	title := fmt.Sprintf("migration %s %s→%s: %s, total %.1fs, downtime %.0fms", name, v.Source, v.Dest, fm.Phase,
		fm.Record.TotalSeconds, fm.Record.DowntimeSeconds*1000)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">%s</text>`+"\n", padL, html.EscapeString(title))

	// Grids and axes.
	for i := 0; i <= 4; i++ {
		f := float64(i) / 4
		y := topY + topH - f*topH
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>`+"\n", padL, y, padL+plotW, y, gridColour)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="%d" text-anchor="end" fill="%s">%s</text>`+"\n", padL-6, y+4, labelFontSize, memColour, num(f*memMax))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="%d" fill="%s">%s</text>`+"\n", padL+plotW+6, y+4, labelFontSize, bpsColour, num(f*bpsMax))
	}
	for i := 0; i <= 2; i++ {
		f := float64(i) / 2
		y := lowY + lowH - f*lowH
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>`+"\n", padL, y, padL+plotW, y, gridColour)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="%d" text-anchor="end" fill="%s">%s</text>`+"\n", padL-6, y+4, labelFontSize, downColour, num(f*downMax))
	}
	for i := 0; i <= 5; i++ {
		t := float64(i) / 5 * tEnd
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="%d" text-anchor="middle">%ss</text>`+"\n", x(t), lowY+lowH+16, labelFontSize, num(t))
	}
	fmt.Fprintf(&b, `<text x="14" y="%d" font-size="%d" fill="%s" transform="rotate(-90 14 %d)" text-anchor="middle">memory remaining (MiB)</text>`+"\n",
		topY+topH/2, labelFontSize, memColour, topY+topH/2)
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="%d" fill="%s" transform="rotate(90 %d %d)" text-anchor="middle">bandwidth (MiB/s)</text>`+"\n",
		svgW-14, topY+topH/2, labelFontSize, bpsColour, svgW-14, topY+topH/2)
	fmt.Fprintf(&b, `<text x="14" y="%d" font-size="%d" fill="%s" transform="rotate(-90 14 %d)" text-anchor="middle">max downtime (ms)</text>`+"\n",
		lowY+lowH/2, labelFontSize, downColour, lowY+lowH/2)

	// The physics: the first pass at the measured bandwidth.
	if predictEnd > 0 {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="6 4"/>`+"\n",
			x(pts[0].AtSeconds), yMem(first), x(predictEnd), yMem(0), predictColour)
	}
	// The series.
	poly := func(colour string, at func(status.Point) (float64, float64), step bool) {
		var sb strings.Builder
		for i, p := range pts {
			px, py := at(p)
			if step && i > 0 {
				_, prev := at(pts[i-1])
				fmt.Fprintf(&sb, "%.1f,%.1f ", px, prev)
			}
			fmt.Fprintf(&sb, "%.1f,%.1f ", px, py)
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", colour, strings.TrimSpace(sb.String()))
	}
	poly(bpsColour, func(p status.Point) (float64, float64) { return x(p.AtSeconds), yBps(mibf(p.Bps)) }, false)
	poly(memColour, func(p status.Point) (float64, float64) { return x(p.AtSeconds), yMem(mibf(p.MemoryRemaining)) }, false)
	poly(downColour, func(p status.Point) (float64, float64) { return x(p.AtSeconds), yDown(p.MaxDowntimeSeconds * 1000) }, true)

	// ferry's actions, with their reasons as tooltips.
	for i, a := range fm.Actions {
		ax := x(a.AtSeconds)
		fmt.Fprintf(&b, `<g><title>%s</title>`, html.EscapeString(fmt.Sprintf("%.1fs %s: %s", a.AtSeconds, a.Action, a.Reason)))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-dasharray="3 3"/>`, ax, topY, ax, lowY+lowH, actionColour)
		label := a.Action
		if a.DowntimeSeconds > 0 {
			label += fmt.Sprintf(" %.0fms", a.DowntimeSeconds*1000)
		}
		ly := topY + 12 + (i%4)*14
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="%d" fill="%s">%s</text></g>`+"\n", ax+3, ly, labelFontSize, actionColour, html.EscapeString(label))
	}

	// Legend.
	legend := []struct{ colour, text string }{
		{memColour, "memory remaining"}, {bpsColour, "bandwidth"}, {downColour, "max downtime"},
		{predictColour, "first pass at the measured bandwidth"}, {actionColour, "ferry's actions"},
	}
	lx := float64(padL)
	for _, l := range legend {
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="14" height="4" fill="%s"/><text x="%.1f" y="%d" font-size="%d">%s</text>`+"\n",
			lx, svgH-14, l.colour, lx+18, svgH-9, legendFontSize, html.EscapeString(l.text))
		lx += 34 + float64(len([]rune(l.text)))*7
	}
	b.WriteString("</svg>\n")
	return b.Bytes(), nil
}

func mibf(b uint64) float64 { return float64(b) / (1 << 20) }

// niceCeil rounds up to a round multiple of a power of ten (an axis's
// end): 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 or 10.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// num prints an axis value without needless decimals.
func num(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
