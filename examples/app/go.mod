module permafrost.dev/examples/app

go 1.26
