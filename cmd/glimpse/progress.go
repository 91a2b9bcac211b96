package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
)

// isTerminalFunc decides whether the progress bar may draw on a writer; tests replace it.
var isTerminalFunc = isTerminal

// progressInterval is how often the bar is redrawn: at most ten times a second.
const progressInterval = 100 * time.Millisecond

// progressBar draws bytes done of total, the rate and the time left on a terminal. It
// is a convert.Progress; all its methods are safe on a nil bar, which draws nothing.
type progressBar struct {
	w     io.Writer
	total int64
	done  atomic.Int64
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
	last  string
}

// startProgress returns a running bar when on is set and w is a terminal, nil otherwise
// (-p is quiet when standard error is a file or a pipe).
func startProgress(w io.Writer, on bool, total int64) *progressBar {
	if !on || !isTerminalFunc(w) {
		return nil
	}
	p := &progressBar{w: w, total: total, start: time.Now(), stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case now := <-t.C:
				p.draw(now)
			}
		}
	}()
	return p
}

// Add counts n more bytes done.
func (p *progressBar) Add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// Finish stops the redraws, draws the final state and ends the line.
func (p *progressBar) Finish() {
	if p == nil {
		return
	}
	close(p.stop)
	p.wg.Wait()
	p.draw(time.Now())
	fmt.Fprintln(p.w)
}

func (p *progressBar) draw(now time.Time) {
	line := renderProgress(p.done.Load(), p.total, now.Sub(p.start))
	if line == p.last {
		return
	}
	p.last = line
	fmt.Fprint(p.w, "\r"+line+"\x1b[K")
}

// renderProgress is one line of the bar: "[#####.....]  45%  1.2 GiB / 2.0 GiB  310 MiB/s  ETA 3s".
func renderProgress(done, total int64, elapsed time.Duration) string {
	const width = 24
	frac := 1.0
	if total > 0 {
		frac = min(1, float64(done)/float64(total))
	}
	fill := int(frac * width)
	var b strings.Builder
	b.WriteString("[" + strings.Repeat("#", fill) + strings.Repeat(".", width-fill) + "]")
	fmt.Fprintf(&b, " %3d%%  %s / %s", int(frac*100), humanize.IBytes(uint64(done)), humanize.IBytes(uint64(total)))
	secs := elapsed.Seconds()
	if secs > 0 && done > 0 {
		rate := float64(done) / secs
		fmt.Fprintf(&b, "  %s/s", humanize.IBytes(uint64(rate)))
		if done < total {
			eta := time.Duration(float64(total-done) / rate * float64(time.Second))
			fmt.Fprintf(&b, "  ETA %s", eta.Round(time.Second))
		}
	}
	return b.String()
}
