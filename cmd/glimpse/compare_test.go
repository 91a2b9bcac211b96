package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

// TestCompareCLIWithQemu runs glimpse compare and qemu-img compare on the same pairs, in
// several formats, and wants the same exit code and the same output.
func TestCompareCLIWithQemu(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "a.raw")
	cliBase(t, base, 5)
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string][]byte{"same": b}
	edit := func(name string, f func(p []byte) []byte) {
		variants[name] = f(slices.Clone(b))
	}
	edit("several", func(p []byte) []byte { p[5<<20+99] = 1; p[1<<20+300<<10+7] ^= 4; p[4<<20+12345+17] ^= 1; return p })
	edit("hole", func(p []byte) []byte { p[3<<20+5] = 1; return p })
	edit("zeroed", func(p []byte) []byte { clear(p[1<<20 : 1<<20+4096]); return p })
	edit("last", func(p []byte) []byte { p[len(p)-2] ^= 1; return p })
	edit("longer", func(p []byte) []byte { return append(p, make([]byte, 1<<20)...) })
	edit("longer-data", func(p []byte) []byte { p = append(p, make([]byte, 1<<20)...); p[len(p)-700] = 1; return p })
	edit("shorter", func(p []byte) []byte { return p[:len(p)-1<<20] })
	formats := []string{"raw"} // vpc rounds sizes to its geometry: it gets other pairs
	for _, f := range []inspect.Format{inspect.QCOW2, inspect.VMDK, inspect.VHDX, inspect.VDI} {
		if cliFormats == nil || slices.Contains(cliFormats, f) {
			formats = append(formats, string(f))
		}
	}
	path := func(raw, format string) string {
		if format == "raw" {
			return raw
		}
		p := strings.TrimSuffix(raw, ".raw") + "." + format
		if _, err := os.Stat(p); err != nil {
			qemutest.Img(t, "convert", "-f", "raw", "-O", format, raw, p)
		}
		return p
	}
	var cases []cliCase
	names := make([]string, 0, len(variants))
	for name := range variants {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		braw := filepath.Join(dir, "b-"+name+".raw")
		if err := os.WriteFile(braw, variants[name], 0o644); err != nil {
			t.Fatal(err)
		}
		for i, fa := range formats {
			fb := formats[(i+1)%len(formats)] // every format on each side, mixed
			a, bp := path(base, fa), path(braw, fb)
			for _, strict := range []bool{false, true} {
				args := []string{"-f", fa, "-F", fb}
				if strict {
					args = append(args, "-s")
				}
				args = append(args, a, bp)
				cases = append(cases, cliCase{name: name + "-" + fa + "-" + fb + map[bool]string{true: "-s"}[strict], args: args})
			}
		}
	}
	// qemu-img first, several at a time (each run is mostly waiting); then glimpse, one at a
	// time: urfave/cli keeps state in package-level flags, so run() is not safe to call
	// from parallel tests.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c := &cases[i]
			cmd := exec.Command("qemu-img", append([]string{"compare", "-U"}, c.args...)...)
			out, err := cmd.Output()
			c.wantOut = string(out)
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				c.wantCode = ee.ExitCode()
			} else if err != nil {
				c.wantCode = -1
				c.wantOut = err.Error()
			}
		}()
	}
	wg.Wait()
	compared := 0
	for _, c := range cases {
		if strings.Contains(c.wantOut, "block status mismatch") {
			continue // qemu-img -s also compares allocation; glimpse's -s is about sizes
		}
		compared++
		code, out, stderr := runCLI(t, append([]string{"compare"}, c.args...)...)
		if code != c.wantCode || out != c.wantOut {
			t.Errorf("%s: compare %v: exit %d, %q (stderr %q); qemu-img exits %d, %q", c.name, c.args, code, out, stderr, c.wantCode, c.wantOut)
		}
	}
	if compared < len(cases)/2 {
		t.Errorf("only %d of %d cases compared", compared, len(cases))
	}
}

type cliCase struct {
	name, wantOut string
	args          []string
	wantCode      int
}

func TestCompareCLIErrors(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.raw")
	cliBase(t, a, 6)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"compare", a}, "need two files"},
		{[]string{"compare", a, filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"compare", "-F", "qcow2", a, a}, "not a qcow2 image"},
		{[]string{"compare", "-f", "nosuch", a, a}, "unknown format"},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args[1:], code, stdout, stderr, tc.want)
		}
	}
}
