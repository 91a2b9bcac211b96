package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"runtime"
	"testing"
)

// streamChunkSizes are the write sizes every fixture is streamed with; the verdict must not
// depend on them.
var streamChunkSizes = []int{1, 17, 512, 64 << 10, 1 << 20}

// streamVerdict feeds data to a Stream in writes of chunk bytes, ignoring early rejections
// (so that Close gives the complete verdict), and returns the final and the early verdicts.
func streamVerdict(data []byte, chunk int, opt OpenOptions) (final Verdict, early *RejectedError) {
	s := NewStream(opt)
	for off := 0; off < len(data); off += chunk {
		_, err := s.Write(data[off:min(off+chunk, len(data))])
		var rej *RejectedError
		if errors.As(err, &rej) && early == nil {
			early = rej
		}
	}
	return s.Close(), early
}

// sameVerdict compares what must agree between the file and the stream inspector.
func sameVerdict(t *testing.T, what string, file, stream Verdict) {
	t.Helper()
	if file.Format != stream.Format || file.VirtualSize != stream.VirtualSize {
		t.Errorf("%s: stream says %s %d bytes, file says %s %d bytes", what, stream.Format, stream.VirtualSize, file.Format, file.VirtualSize)
	}
	if !reflect.DeepEqual(findingCodes(file.Findings), findingCodes(stream.Findings)) {
		t.Errorf("%s: stream findings %v, file findings %v", what, stream.Findings, file.Findings)
	}
	if (file.Err == nil) != (stream.Err == nil) {
		t.Errorf("%s: stream error %v, file error %v", what, stream.Err, file.Err)
	}
}

func findingCodes(fs []Finding) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Code)
	}
	return out
}

// checkStreamAgrees runs one image through Examine and through a Stream with every chunk
// size, and checks that all verdicts agree and that early rejections are consistent.
func checkStreamAgrees(t *testing.T, name string, data []byte, opt OpenOptions) Verdict {
	t.Helper()
	opt.Name = name
	file := Examine(bytes.NewReader(data), int64(len(data)), opt)
	var firstEarly *RejectedError
	first := true
	for _, chunk := range streamChunkSizes {
		if chunk == 1 && len(data) > 8<<20 {
			continue // a byte at a time over many MiB only measures the test's own loop
		}
		stream, early := streamVerdict(data, chunk, opt)
		sameVerdict(t, fmt.Sprintf("%s (writes of %d bytes)", name, chunk), file, stream)
		if first {
			firstEarly, first = early, false
			continue
		}
		switch {
		case (firstEarly == nil) != (early == nil):
			t.Errorf("%s: early rejection with writes of %d bytes: %v; with other writes: %v", name, chunk, early, firstEarly)
		case early != nil && (early.Offset != firstEarly.Offset || !reflect.DeepEqual(early.Verdict.Findings, firstEarly.Verdict.Findings)):
			t.Errorf("%s: early rejection depends on chunking: %v vs %v", name, early, firstEarly)
		}
	}
	if firstEarly != nil && file.Safe() {
		t.Errorf("%s: stream rejected early (%v) an image the file inspector finds safe", name, firstEarly)
	}
	return file
}

func TestStreamRaw(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(rnd.Uint32())
	}
	data[510], data[511] = 0, 0 // no MBR signature
	v := checkStreamAgrees(t, "random.raw", data, OpenOptions{})
	if v.Format != Raw || v.VirtualSize != alignUp(int64(len(data)), 512) || !v.Safe() {
		t.Fatalf("random data: %+v", v)
	}
	v = checkStreamAgrees(t, "declared.raw", data, OpenOptions{Format: Raw})
	if !v.Safe() {
		t.Fatalf("declared raw: %+v", v)
	}
	for _, n := range []int{0, 1, 511, 512, 513, 4096, 65535, 65536, 65537} {
		checkStreamAgrees(t, fmt.Sprintf("short-%d.raw", n), data[:n], OpenOptions{})
	}
}

// TestStreamEarlyMismatch: content that cannot be the declared format is refused as soon as
// the magic could have been seen.
func TestStreamEarlyMismatch(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, f := range headFormats {
		if _, ok := specFor(f); !ok {
			continue
		}
		s := NewStream(OpenOptions{Name: "x", Format: f})
		var rej *RejectedError
		for off := 0; off < len(data) && rej == nil; off += 100 {
			_, err := s.Write(data[off : off+100])
			errors.As(err, &rej)
		}
		if rej == nil || rej.Offset != 512 || !rej.Verdict.Has(FindFormatMismatch) {
			t.Errorf("declared %s over raw bytes: rejection %v, want a format mismatch at byte 512", f, rej)
		}
		if v := s.Abort(); !v.Has(FindFormatMismatch) {
			t.Errorf("declared %s: Abort verdict %+v", f, v)
		}
	}
}

// TestStreamMemory: whatever the input, the stream keeps under 1 MiB and allocates nothing
// per byte.
func TestStreamMemory(t *testing.T) {
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	s := NewStream(OpenOptions{Name: "big", Format: Raw})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 2048 { // 128 MiB
		s.Write(chunk)
	}
	runtime.ReadMemStats(&after)
	if m := s.memory(); m > 1<<20 {
		t.Errorf("stream keeps %d bytes, over 1 MiB", m)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("streaming 128 MiB allocated %d bytes", grew)
	}
	if v := s.Close(); v.VirtualSize != 128<<20 {
		t.Errorf("verdict %+v", v)
	}
}

// streamFile is checkStreamAgrees on a file.
func streamFile(t *testing.T, path string, opt OpenOptions) Verdict {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return checkStreamAgrees(t, path, data, opt)
}

func TestPolicyJudge(t *testing.T) {
	data := make([]byte, 1<<20)
	v := checkStreamAgrees(t, "x.raw", data, OpenOptions{Format: Raw})
	if got := (Policy{}).Judge(v); len(got) != 0 {
		t.Fatalf("clean raw judged %v", got)
	}
	if got := (Policy{AllowFormats: []Format{QCOW2}}).Judge(v); len(got) != 1 || got[0].Code != FindNotAllowed {
		t.Fatalf("raw outside qcow2-only policy: %v", got)
	}
	if got := (Policy{MaxVirtualSize: 4096}).Judge(v); len(got) != 1 || got[0].Code != FindVirtualSize {
		t.Fatalf("1 MiB over a 4 KiB limit: %v", got)
	}
	bad := Verdict{Format: QCOW2, Err: ErrInvalid, Findings: []Finding{{FindMalformed, "x"}}}
	if got := (Policy{}).Judge(bad); len(got) != 1 || got[0].Code != FindMalformed {
		t.Fatalf("malformed: %v", got)
	}
}
