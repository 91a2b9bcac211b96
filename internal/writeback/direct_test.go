package writeback

import (
	"bytes"
	"os"
	"testing"
)

func TestDirect(t *testing.T) {
	// Whether the file system takes O_DIRECT or not (tmpfs may not), the bytes must be right.
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, "direct-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	d := NewDirect(f)
	t.Logf("%s: O_DIRECT %v", dir, d.Bypassing())
	var want []byte
	buf := AlignedBuffer(3 * DirectAlign)
	if !Aligned(buf) || len(buf) != 3*DirectAlign {
		t.Fatalf("AlignedBuffer: aligned %v, length %d", Aligned(buf), len(buf))
	}
	for i, n := range []int{3 * DirectAlign, DirectAlign, 1000, DirectAlign} {
		b := buf[:n]
		for j := range b {
			b[j] = byte(i*31 + j)
		}
		if got, err := d.Write(b); got != n || err != nil {
			t.Fatalf("write %d of %d bytes: %d, %v", i, n, got, err)
		}
		want = append(want, b...)
		if i == 2 && d.Bypassing() {
			t.Errorf("still bypassing the page cache after a write of %d bytes", n)
		}
	}
	if unaligned := buf[1 : 1+DirectAlign]; Aligned(unaligned) {
		t.Errorf("Aligned(buf[1:]) = true")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: file holds %d bytes, not the %d written", dir, len(got), len(want))
	}
}
