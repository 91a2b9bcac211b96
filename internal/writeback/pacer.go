package writeback

// Step is how much a Pacer lets accumulate before it starts writeback: large enough that
// the calls cost nothing, small enough that the final fsync is short.
const Step = 16 << 20

// Pacer starts writeback on a file that is written front to back, each time another Step
// bytes have arrived.
type Pacer struct {
	f       any
	started int64 // bytes already handed to Start
}

// NewPacer paces writeback for f (see Start for what f may be).
func NewPacer(f any) *Pacer { return &Pacer{f: f} }

// Written tells the pacer that the file now holds size bytes.
func (p *Pacer) Written(size int64) {
	if size-p.started >= Step {
		Start(p.f, p.started, size-p.started)
		p.started = size
	}
}
