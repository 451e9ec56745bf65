package deploy

// BuildEnv returns the environment, beyond the inherited one, of every build of
// a release binary: no cgo, so the binary is static and runs on a
// distroless or scratch image.
func BuildEnv() []string { return []string{"CGO_ENABLED=0"} }

// BuildFlags returns the `go build` flags of every release binary, in order:
// reproducible paths, no symbol tables, and the IANA time-zone database
// embedded (schedules are read in a named zone, and a minimal image or
// host may lack /usr/share/zoneinfo). The container recipe
// (container/Dockerfile) runs exactly these, a test checks it, and the
// end-to-end tests build the binary they drive with them too.
func BuildFlags() []string { return []string{"-trimpath", "-tags=timetzdata", "-ldflags=-s -w"} }

// MainPackage is the package path of the balise command, relative to the
// module root.
const MainPackage = "./cmd/balise"

// BuildArgs returns the arguments of `go` that build the release binary
// into out, to be run from the module root with BuildEnv added to the
// environment.
func BuildArgs(out string) []string {
	args := []string{"build"}
	args = append(args, BuildFlags()...)
	return append(args, "-o", out, MainPackage)
}
