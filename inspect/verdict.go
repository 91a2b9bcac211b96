package inspect

import (
	"errors"
	"io"
	"os"
)

// Verdict is what inspection concludes about an image, the same whether the image was a
// file (Examine) or a stream (Stream): its format, its virtual size, and every safety
// finding. An image that could not be parsed at all has Err set and a FindMalformed (or
// FindFormatMismatch) finding, so that a verdict with no findings always means "safe".
type Verdict struct {
	Format      Format    `json:"format"`
	VirtualSize int64     `json:"virtual-size"`
	Findings    []Finding `json:"findings"`
	// Err is why the image could not be parsed; nil when it was.
	Err error `json:"-"`
	// Info is the full description when the image was parsed; nil otherwise.
	Info *Info `json:"-"`
}

// Safe reports whether the image parsed and has no findings.
func (v Verdict) Safe() bool { return v.Err == nil && len(v.Findings) == 0 }

// Has reports whether the verdict carries a finding with code.
func (v Verdict) Has(code string) bool {
	for _, f := range v.Findings {
		if f.Code == code {
			return true
		}
	}
	return false
}

// Examine opens the image in r and returns its verdict. It never fails: errors become the
// verdict's Err and a finding.
func Examine(r io.ReaderAt, size int64, opt OpenOptions) Verdict {
	d, err := openDisk(r, size, opt, nil)
	return verdictOf(d, err, opt)
}

// ExamineFile is Examine on a named file.
func ExamineFile(name string, opt OpenOptions) Verdict {
	f, err := os.Open(name)
	if err != nil {
		return Verdict{Format: opt.Format, Err: err, Findings: []Finding{{FindMalformed, err.Error()}}}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Verdict{Format: opt.Format, Err: err, Findings: []Finding{{FindMalformed, err.Error()}}}
	}
	if opt.Name == "" {
		opt.Name = name
	}
	return Examine(f, st.Size(), opt)
}

func verdictOf(d *disk, err error, opt OpenOptions) Verdict {
	if err != nil {
		v := Verdict{Format: opt.Format, Err: err}
		switch {
		case errors.Is(err, ErrWrongFormat):
			v.Findings = []Finding{{FindFormatMismatch, err.Error()}}
		case errors.Is(err, ErrUnsupported):
			v.Findings = []Finding{{FindUnreadableSection, err.Error()}}
		default:
			v.Findings = []Finding{{FindMalformed, err.Error()}}
		}
		return v
	}
	defer d.Close()
	info := d.Info()
	return Verdict{Format: info.Format, VirtualSize: info.VirtualSize, Findings: info.Safety, Info: &info}
}
