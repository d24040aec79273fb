# cmake -DSOURCE_DIR=... -DCLANG_FORMAT=... -P check_format.cmake: fails when a C++ file of the tree differs from
# what clang-format (the repository's .clang-format) writes. The ctest "lint_format" runs it; fix with
#   clang-format -i $(git ls-files '*.h' '*.cpp')
file(GLOB_RECURSE files RELATIVE ${SOURCE_DIR}
     ${SOURCE_DIR}/include/*.h ${SOURCE_DIR}/src/*.h ${SOURCE_DIR}/src/*.cpp ${SOURCE_DIR}/tools/*.h
     ${SOURCE_DIR}/tools/*.cpp ${SOURCE_DIR}/tests/*.h ${SOURCE_DIR}/tests/*.cpp ${SOURCE_DIR}/bench/*.h
     ${SOURCE_DIR}/bench/*.cpp ${SOURCE_DIR}/examples/*.cpp ${SOURCE_DIR}/fuzz/*.cpp ${SOURCE_DIR}/fuzz/*.h)
list(FILTER files EXCLUDE REGEX "^(build|\\.deps)")
list(SORT files)
set(unformatted "")
foreach(f IN LISTS files)
  execute_process(COMMAND ${CLANG_FORMAT} --style=file --dry-run --Werror ${f}
                  WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(NOT rc EQUAL 0)
    list(APPEND unformatted ${f})
  endif()
endforeach()
list(LENGTH files n)
if(unformatted)
  list(LENGTH unformatted bad)
  string(REPLACE ";" "\n  " listing "${unformatted}")
  message(FATAL_ERROR "${bad} of ${n} files are not clang-formatted:\n  ${listing}\n"
                      "fix: clang-format -i <file> (the repository's .clang-format)")
endif()
message(STATUS "clang-format: ${n} files formatted")
