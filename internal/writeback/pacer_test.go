package writeback

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPacer(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := NewPacer(f)
	for _, c := range []struct{ size, started int64 }{
		{1 << 20, 0}, {Step - 1, 0}, {Step, Step}, {Step + 5<<20, Step}, {2*Step + 7, 2*Step + 7},
	} {
		if err := f.Truncate(c.size); err != nil {
			t.Fatal(err)
		}
		p.Written(c.size)
		if p.started != c.started {
			t.Errorf("after %d bytes: writeback started up to %d, want %d", c.size, p.started, c.started)
		}
	}
	NewPacer(struct{}{}).Written(Step) // no descriptor: nothing to do, no panic
}
