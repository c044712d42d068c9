"""The image: verified downloads, the build, one image per platform, the push and its proof; the build context is package data in context/."""
