package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"glimpse/inspect"
)

// Exit codes of glimpse check. When several files or findings apply, the most severe wins:
// unsafe (4), then corrupt (2), then could-not-check (1), then leaks (3).
const (
	exitClean   = 0
	exitError   = 1 // could not be checked: missing, unreadable, I/O error
	exitCorrupt = 2 // structural corruption, or the file is malformed
	exitLeaks   = 3 // leaked clusters only
	exitUnsafe  = 4 // unsafe, outside policy, or not the declared format
)

var severity = map[int]int{exitClean: 0, exitLeaks: 1, exitError: 2, exitCorrupt: 3, exitUnsafe: 4}

func worse(a, b int) int {
	if severity[b] > severity[a] {
		return b
	}
	return a
}

// checkResult is one file's verdict; its JSON extends `qemu-img check --output=json`.
type checkResult struct {
	inspect.Report
	VirtualSize int64             `json:"virtual-size"`
	Safety      []inspect.Finding `json:"safety"`
	Verdict     string            `json:"verdict"`
	ExitCode    int               `json:"exit-code"`
	Error       string            `json:"error,omitempty"`
}

var verdicts = map[int]string{exitClean: "clean", exitError: "error", exitCorrupt: "corrupt", exitLeaks: "leaks", exitUnsafe: "unsafe"}

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "check structure, safety and policy (the CI gate); exit 0 clean, 1 not checked, 2 corrupt, 3 leaks, 4 unsafe",
		ArgsUsage: "FILE...",
		Flags: []cli.Flag{
			formatFlag(),
			outputFlag(),
			&cli.StringFlag{Name: "allow-format", Usage: "accept only these formats (`LIST`, comma-separated)"},
			&cli.StringFlag{Name: "max-virtual-size", Usage: "refuse images larger than `SIZE` (e.g. 100G, 1TiB)"},
			&cli.BoolFlag{Name: "allow-backing", Usage: "accept images that name a backing file or data file (inside their directory)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.Exit("check: no FILE given", 1)
			}
			asJSON, err := jsonOutput(c)
			if err != nil {
				return err
			}
			opt, err := openOptions(c)
			if err != nil {
				return err
			}
			var pol inspect.Policy
			pol.AllowBacking = opt.AllowBacking
			if s := c.String("allow-format"); s != "" {
				if pol.AllowFormats, err = inspect.ParseFormatList(s); err != nil {
					return cli.Exit("--allow-format: "+err.Error(), 1)
				}
			}
			if s := c.String("max-virtual-size"); s != "" {
				n, err := humanize.ParseBytes(s)
				if err != nil {
					return cli.Exit(fmt.Sprintf("--max-virtual-size %q: %v", s, err), 1)
				}
				pol.MaxVirtualSize = int64(n)
			}
			code := exitClean
			var results []checkResult
			for _, name := range c.Args().Slice() {
				r := checkFile(name, opt, pol)
				code = worse(code, r.ExitCode)
				results = append(results, r)
			}
			if asJSON {
				if len(results) == 1 {
					writeJSON(c.App.Writer, results[0])
				} else {
					writeJSON(c.App.Writer, results)
				}
			} else {
				for i, r := range results {
					if i > 0 {
						fmt.Fprintln(c.App.Writer)
					}
					printCheck(c.App.Writer, r)
				}
			}
			if code != exitClean {
				return cli.Exit("", code)
			}
			return nil
		},
	}
}

func checkFile(name string, opt inspect.OpenOptions, pol inspect.Policy) checkResult {
	r := checkResult{Report: inspect.Report{Filename: name, Format: opt.Format}, Safety: []inspect.Finding{}}
	img, err := inspect.OpenFile(name, opt)
	if err != nil {
		r.Error = err.Error()
		switch {
		case errors.Is(err, inspect.ErrWrongFormat):
			r.ExitCode = exitUnsafe
			r.Safety = append(r.Safety, inspect.Finding{Code: inspect.FindFormatMismatch, Message: err.Error()})
		case errors.Is(err, inspect.ErrInvalid):
			r.ExitCode = exitCorrupt
			r.Safety = append(r.Safety, inspect.Finding{Code: inspect.FindMalformed, Message: err.Error()})
		case errors.Is(err, inspect.ErrUnsupported), errors.Is(err, inspect.ErrNotAllowed):
			r.ExitCode = exitUnsafe
			r.Safety = append(r.Safety, inspect.Finding{Code: inspect.FindUnreadableSection, Message: err.Error()})
		default:
			r.ExitCode = exitError
		}
		r.Verdict = verdicts[r.ExitCode]
		return r
	}
	defer img.Close()
	info := img.Info()
	r.Report = img.Check()
	r.Format = info.Format
	r.VirtualSize = info.VirtualSize
	r.Safety = append(r.Safety, pol.Evaluate(info)...)
	r.ExitCode = exitClean
	if r.Leaks > 0 {
		r.ExitCode = worse(r.ExitCode, exitLeaks)
	}
	if r.CheckErrors > 0 {
		r.ExitCode = worse(r.ExitCode, exitError)
	}
	if r.Corruptions > 0 {
		r.ExitCode = worse(r.ExitCode, exitCorrupt)
	}
	if len(r.Safety) > 0 {
		r.ExitCode = worse(r.ExitCode, exitUnsafe)
	}
	r.Verdict = verdicts[r.ExitCode]
	return r
}

func printCheck(w io.Writer, r checkResult) {
	fmt.Fprintf(w, "%s: ", r.Filename)
	if r.Error != "" {
		fmt.Fprintf(w, "%s\n    %s\n", r.Verdict, r.Error)
	} else {
		fmt.Fprintf(w, "%s (%s, virtual size %s)\n", r.Verdict, r.Format, humanize.IBytes(uint64(r.VirtualSize)))
	}
	if r.Error == "" {
		if !r.Supported {
			fmt.Fprintln(w, "    this format has no structure to check")
		} else if r.Clean() {
			fmt.Fprintln(w, "    no errors were found on the image")
		}
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "    %s: %s at offset %d: %s\n", p.Kind, p.Structure, p.Offset, p.Message)
	}
	if r.Corruptions > 0 {
		fmt.Fprintf(w, "    %d errors were found on the image\n", r.Corruptions)
	}
	if r.Leaks > 0 {
		fmt.Fprintf(w, "    %d leaked clusters were found on the image\n", r.Leaks)
	}
	if r.Supported && r.TotalClusters > 0 {
		fmt.Fprintf(w, "    %d/%d = %.2f%% allocated, %d compressed\n", r.AllocatedClusters, r.TotalClusters,
			100*float64(r.AllocatedClusters)/float64(r.TotalClusters), r.CompressedClusters)
	}
	for _, f := range r.Safety {
		fmt.Fprintf(w, "    unsafe: %s: %s\n", f.Code, f.Message)
	}
}
