# Installation beyond the targets (included from the top CMakeLists.txt):
#   ${datadir}/vramfit/demo/            the demo model, when models/demo exists
#   ${libdir}/pkgconfig/vramfit.pc      pkg-config file (from cmake/vramfit.pc.in)
#   ${VF_PYTHON_INSTALL_DIR}/vramfit/   the Python package, with _installed.py naming
#                                       the installed library
# Both generated files are written when installing, not when configuring, because
# `cmake --install build --prefix P` picks the prefix only then; the work is in
# cmake/install_generated.cmake, run by the install script with the real prefix.
set(VF_PYTHON_INSTALL_DIR "lib/python3/dist-packages" CACHE STRING
    "Where the Python package is installed, relative to the prefix (or absolute)")

install(DIRECTORY ${CMAKE_SOURCE_DIR}/python/vramfit DESTINATION ${VF_PYTHON_INSTALL_DIR}
        PATTERN "__pycache__" EXCLUDE PATTERN "*.pyc" EXCLUDE PATTERN "_installed.py" EXCLUDE
        PATTERN "libvramfit.so*" EXCLUDE)

install(CODE "
  set(VF_LIBFILE \"$<TARGET_SONAME_FILE_NAME:vramfit>\")
  set(VF_BINARY_DIR \"${CMAKE_BINARY_DIR}\")
  set(VF_SOURCE_DIR \"${CMAKE_SOURCE_DIR}\")
  set(VF_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(VF_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(VF_PYDIR \"${VF_PYTHON_INSTALL_DIR}\")
  set(VF_VERSION \"${PROJECT_VERSION}\")
  include(\"${CMAKE_SOURCE_DIR}/cmake/install_generated.cmake\")
")

# The trained demo model (tools/demo/), which `vramfit generate` runs when no
# --model is given: installed to ${datadir}/vramfit/demo when the source tree has
# it. The command looks for it beside itself (bindir/VF_BIN_TO_DATADIR, so a
# prefix given only at install time works), in the configured datadir, then in
# the source tree (so that ./build/vramfit finds models/demo without installing).
install(DIRECTORY ${CMAKE_SOURCE_DIR}/models/demo/ DESTINATION ${CMAKE_INSTALL_DATADIR}/vramfit/demo
        OPTIONAL)
file(RELATIVE_PATH VF_BIN_TO_DATADIR ${CMAKE_INSTALL_FULL_BINDIR} ${CMAKE_INSTALL_FULL_DATADIR})
target_compile_definitions(vramfit_cli PRIVATE
  VF_BIN_TO_DATADIR="${VF_BIN_TO_DATADIR}"
  VF_DATADIR="${CMAKE_INSTALL_FULL_DATADIR}"
  VF_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
