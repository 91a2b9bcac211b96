package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"glimpse/convert"
	"glimpse/inspect"
)

// maxWorkers is qemu-img's bound for -m (coroutines); more would only wait for buffers.
const maxWorkers = 16

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert a disk image (like qemu-img convert): -O raw, to a sparse file or - for standard output",
		ArgsUsage: "SRC DST",
		Flags: []cli.Flag{
			formatFlag(),
			&cli.StringFlag{Name: "O", Value: "raw", Usage: "output format `FMT` (raw; the other writers are not there yet)"},
			&cli.BoolFlag{Name: "p", Usage: "show a progress bar (when standard error is a terminal)"},
			&cli.StringFlag{Name: "S", Usage: "zero runs of at least `SIZE` become holes (default 4k; 0 writes every byte, fully allocated)"},
			&cli.IntFlag{Name: "m", Usage: fmt.Sprintf("`N` parallel workers, 1 to %d (default: the number of CPUs)", maxWorkers)},
			&cli.StringFlag{Name: "t", Value: "unsafe", Usage: "output `CACHE` mode: unsafe (no flush, qemu-img's default) or writeback (flush before the rename)"},
			&cli.BoolFlag{Name: "allow-backing", Usage: "read backing files, data files and extents the image names (inside its directory only)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return cli.Exit("convert: need SRC and DST (- for standard output)", 1)
			}
			src, dst := c.Args().Get(0), c.Args().Get(1)
			if err := checkOutputFormat(c.String("O")); err != nil {
				return err
			}
			var opt convert.Options
			if c.IsSet("S") {
				n, err := parseSize(c.String("S"))
				if err != nil || n%512 != 0 || n > convert.MaxSparseSize {
					return cli.Exit(fmt.Sprintf("convert: -S %q: invalid sparse size; valid sizes are multiples of 512 up to %d (0 writes every byte)", c.String("S"), convert.MaxSparseSize), 1)
				}
				opt.SparseSize = n
				opt.FullyAllocated = n == 0
			}
			if c.IsSet("m") {
				m := c.Int("m")
				if m < 1 || m > maxWorkers {
					return cli.Exit(fmt.Sprintf("convert: -m %d: the number of workers must be between 1 and %d", m, maxWorkers), 1)
				}
				opt.Workers = m
			}
			var ropt convert.RawOptions
			switch c.String("t") {
			case "unsafe":
			case "writeback", "writethrough", "none", "directsync":
				ropt.Sync = true
			default:
				return cli.Exit(fmt.Sprintf("convert: -t %q: cache mode must be unsafe, writeback, writethrough, none or directsync", c.String("t")), 1)
			}
			oopt, err := openOptions(c)
			if err != nil {
				return err
			}
			img, err := inspect.OpenFile(src, oopt)
			if err != nil {
				return cli.Exit("convert: "+err.Error(), 1)
			}
			defer img.Close()
			var w convert.Writer
			if dst == "-" {
				if isTerminalFunc(c.App.Writer) {
					return cli.Exit("convert: standard output is a terminal; redirect it or name a file", 1)
				}
				w = convert.NewRawStream(c.App.Writer, "standard output")
			} else {
				if same(src, dst) {
					return cli.Exit(fmt.Sprintf("convert: %s and %s are the same file", src, dst), 1)
				}
				rw, err := convert.CreateRaw(dst, ropt)
				if err != nil {
					return cli.Exit("convert: "+err.Error(), 1)
				}
				w = rw
			}
			bar := startProgress(c.App.ErrWriter, c.Bool("p"), img.Size())
			if bar != nil {
				opt.Progress = bar
			}
			err = convert.Convert(c.Context, img, w, opt)
			bar.Finish()
			if errors.Is(err, context.Canceled) {
				if dst == "-" {
					return cli.Exit("convert: interrupted: standard output holds part of the disk only", 1)
				}
				return cli.Exit("convert: interrupted: nothing was left under "+dst, 1)
			}
			if err != nil {
				return cli.Exit("convert: "+err.Error(), 1)
			}
			return nil
		},
	}
}

// checkOutputFormat accepts raw and says plainly that the other formats are not written yet.
func checkOutputFormat(s string) error {
	f, err := inspect.ParseFormat(s)
	if err != nil {
		return cli.Exit("convert: -O: "+err.Error(), 1)
	}
	switch f {
	case inspect.Raw:
		return nil
	case inspect.QCOW2, inspect.VMDK, inspect.VHD, inspect.VHDX, inspect.VDI, inspect.OVA:
		return cli.Exit(fmt.Sprintf("convert: -O %s: writing %s is not yet supported (only raw for now)", s, f), 1)
	}
	return cli.Exit(fmt.Sprintf("convert: -O %s: glimpse cannot write %s images", s, f), 1)
}

// same reports whether two names are the same existing file.
func same(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// parseSize reads a size as qemu-img does: a number with an optional binary suffix
// (k, M, G, T, P, E, case-insensitive, optionally followed by "iB" or "B").
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "iB"), "B")
	shift := 0
	if t != "" {
		switch strings.ToUpper(t[len(t)-1:]) {
		case "K":
			shift = 10
		case "M":
			shift = 20
		case "G":
			shift = 30
		case "T":
			shift = 40
		case "P":
			shift = 50
		case "E":
			shift = 60
		}
		if shift > 0 {
			t = strings.TrimSpace(t[:len(t)-1])
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: not a number with an optional k, M, G, T suffix", s)
	}
	if shift > 0 && n > (1<<63-1)>>shift || shift == 0 && n > 1<<63-1 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(n << shift), nil
}
