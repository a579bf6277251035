# Installation beyond the targets (included from the top CMakeLists.txt):
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
