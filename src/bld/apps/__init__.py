"""The front ends: the `bld` command line (`cli`) and the web app (`webapp`).

Only this layer decides devices, dtypes, output files and processes; it calls the library (`bld.editing`,
`bld.loading`, `bld.image_io`) and nothing in the library imports it.
"""
